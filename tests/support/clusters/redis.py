"""Redis for failure tests: one server (``RedisServer``), and a primary with a replica watched
by three Sentinels (``RedisSentinelGroup``). Commands go over a few lines of RESP, so this
module needs no client library."""

from __future__ import annotations

import functools
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import (
    LOCALHOST,
    STARTUP_TIMEOUT_S,
    Cluster,
    ClusterError,
    Service,
    free_port,
    port_open,
    require,
    wait_for,
)


class RespError(Exception):
    """An error reply from Redis."""


def redis_command(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """Send one command to a Redis or Sentinel on ``port`` and return the decoded reply.

    A few lines of RESP keep this module free of client libraries, and free of their
    retries and connection pools, which would blur what a failure test observes.
    """
    parts = [str(arg).encode() for arg in args]
    request = b"*%d\r\n" % len(parts) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in parts
    )
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as sock:
        sock.sendall(request)
        stream = sock.makefile("rb")
        return _read_reply(stream)


def _read_reply(stream: Any) -> Any:
    line: bytes = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode()
    if kind == b"-":
        raise RespError(body.decode())
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data: bytes = stream.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(stream) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line!r}")


def try_redis(port: int, *args: str | int) -> Any:
    """``redis_command``, or None when the server does not answer or answers an error."""
    try:
        return redis_command(port, *args, timeout=1.0)
    except (OSError, RespError):
        return None


class RedisServer:
    """One ``redis-server`` on ``port`` with its files in ``directory``, started again on
    the same port and directory after a kill (what it then holds depends on ``options``:
    nothing without persistence, every acknowledged write with an ``appendfsync always``
    append-only file)."""

    def __init__(self, port: int, directory: Path, options: Sequence[str] = ()) -> None:
        self.port = port
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir.parent / f"redis-{port}.log"
        self.argv = [
            require("redis-server"),
            "--port", str(port),
            "--bind", LOCALHOST,
            "--dir", str(directory),
            "--save", "",
            *options,
        ]  # fmt: skip
        self._service: Service | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def start(self, *, timeout: float = 30.0) -> None:
        """Start it and wait until it answers PING (a replica answers before it has synced)."""
        self._service = Service(self.argv, log=self.log)
        self._service.start()

        def pong() -> bool:
            if self._service is None or not self._service.running():
                raise ClusterError(f"redis-server on {self.port} exited")
            return bool(try_redis(self.port, "PING") == "PONG")

        wait_for(pong, timeout=timeout, what=f"Redis {self.port} to answer", log=self.log)

    def running(self) -> bool:
        return self._service is not None and self._service.running()

    def command(self, *args: str | int) -> Any:
        return redis_command(self.port, *args)

    def kill(self) -> None:
        """SIGKILL, as in a crash; ``start`` brings it back on the same port."""
        if self._service is not None:
            self._service.kill()


class RedisSentinelGroup(Cluster):
    """A Redis primary and one replica, watched by three Sentinels with a quorum of two.

    Failure detection is tightened (``down_after_ms``) so a failover takes seconds. The
    nodes keep no data on disk: a restarted node comes back empty and resyncs from the
    primary, which is what a replica does after a crash anyway.
    """

    prefix = "axon-chaos-redis-"

    def __init__(
        self,
        *,
        master_name: str = "axon-chaos",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.redis_server = require("redis-server")
        super().__init__()
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.original_primary_port = free_port()
        self.original_replica_port = free_port()
        # Follow the roles, which swap on a failover; the ports stay with the processes.
        self.primary_port = self.original_primary_port
        self.replica_port = self.original_replica_port
        self.sentinel_ports = [free_port() for _ in range(3)]
        self._nodes: dict[int, RedisServer] = {}
        self._sentinels: list[Service] = []
        self._killed_port: int | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """Sentinel addresses, in the ``[(host, port), ...]`` form Sentinel clients take."""
        return [(LOCALHOST, port) for port in self.sentinel_ports]

    @property
    def sentinel_addresses(self) -> list[str]:
        """The same as ``host:port`` strings, as ``AXON_BACKENDS__REDIS_SENTINELS`` takes."""
        return [f"{LOCALHOST}:{port}" for port in self.sentinel_ports]

    def _node(self, port: int, replica_of: int | None) -> RedisServer:
        options = [
            "--appendonly", "no",
            # A full resync streams straight away instead of after Redis 7's 5 s default
            # wait for more replicas, both at start-up and when a node rejoins.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if replica_of is not None:
            options += ["--replicaof", LOCALHOST, str(replica_of)]
        node = self._nodes[port] = RedisServer(port, self.dir / f"redis-{port}", options)
        return node

    def _start(self) -> None:
        self._node(self.primary_port, None).start()
        self._node(self.replica_port, self.primary_port).start()
        # Sentinel learns replicas from the primary's INFO, refreshed only every 10 s, so it
        # starts once the replica is attached and knows it from its first look.
        self._wait_replica_linked(self.replica_port, self.primary_port, STARTUP_TIMEOUT_S)
        for index, port in enumerate(self.sentinel_ports):
            sentinel_dir = self.dir / f"sentinel-{index}"
            sentinel_dir.mkdir()
            # One file per Sentinel: each rewrites its own with what it learns.
            conf = sentinel_dir / "sentinel.conf"
            conf.write_text(
                f"port {port}\n"
                f"bind {LOCALHOST}\n"
                f"dir {sentinel_dir}\n"
                f"sentinel monitor {self.master_name} {LOCALHOST} {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            sentinel = Service(
                [self.redis_server, str(conf), "--sentinel"],
                log=self.dir / f"sentinel-{index}.log",
            )
            self._sentinels.append(sentinel)
            sentinel.start()
        # A failover needs the replica known and a majority of Sentinels aware of each other
        # (they meet through hello messages every 2 s): wait for both on every Sentinel.
        for index, port in enumerate(self.sentinel_ports):
            wait_for(
                functools.partial(self._sentinel_ready, port),
                timeout=STARTUP_TIMEOUT_S,
                what=f"Sentinel {port} to see the replica and the other Sentinels",
                log=self.dir / f"sentinel-{index}.log",
            )

    def _sentinel_ready(self, port: int) -> bool:
        replicas = try_redis(port, "SENTINEL", "REPLICAS", self.master_name)
        peers = try_redis(port, "SENTINEL", "SENTINELS", self.master_name)
        return bool(replicas) and peers is not None and len(peers) == len(self.sentinel_ports) - 1

    def _wait_replica_linked(self, replica: int, primary: int, timeout: float) -> None:
        def linked() -> bool:
            info = try_redis(replica, "INFO", "replication")
            if not isinstance(info, str):
                return False
            fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
            return (
                fields.get("role") == "slave"
                and fields.get("master_port") == str(primary)
                and fields.get("master_link_status") == "up"
            )

        wait_for(linked, timeout=timeout, what=f"Redis {replica} to replicate {primary}")

    def sentinel_master(self, sentinel_port: int) -> int | None:
        """The primary's port as one Sentinel reports it, or None if it does not answer."""
        reply = try_redis(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def role(self, port: int) -> str | None:
        """``master`` or ``slave`` as the node on ``port`` reports, or None when it is down."""
        reply = try_redis(port, "ROLE")
        return str(reply[0]) if isinstance(reply, list) and reply else None

    def kill_primary(self) -> int:
        """SIGKILL the current primary; return its port."""
        port = self.primary_port
        self._nodes[port].kill()
        self._killed_port = port
        return port

    def kill_sentinel(self, index: int) -> None:
        """SIGKILL Sentinel ``index`` (it stays down: a failover needs the other two)."""
        self._sentinels[index].kill()

    def wait_promoted(self, timeout: float = 30.0) -> int:
        """Wait until every Sentinel names a new primary and that node says it is one;
        return its port.

        Waiting for all of them (that answer), not just the first to switch, means that a
        client asking any Sentinel from now on is sent to the new primary.
        """
        old = self.primary_port

        def promoted() -> int | None:
            replies = [self.sentinel_master(port) for port in self.sentinel_ports]
            answers = {port for port in replies if port is not None}
            # A Sentinel a test has stopped does not answer; a majority must, and agree.
            if len(answers) != 1 or len(replies) - replies.count(None) <= len(replies) // 2:
                return None
            (port,) = answers
            if port == old or self.role(port) != "master":
                return None
            return port

        new = wait_for(promoted, timeout=timeout, what=f"Sentinel to promote a replica of {old}")
        self.primary_port, self.replica_port = new, old
        return new

    def restart_old_primary(self, *, wait: bool = True, timeout: float = 60.0) -> int:
        """Start the killed node again on its port, with its original configuration (no
        ``replicaof``), as a crashed primary's supervisor would; return its port.

        It comes back empty and, for a while, as a primary of its own: Sentinel demotes it
        only after it has reported that role for 8 s (four hello periods, fixed in Redis).
        With ``wait`` this returns once it replicates the current primary.
        """
        port = self._killed_port
        if port is None:
            raise ClusterError("no primary was killed")
        self._node(port, None).start()
        wait_for(lambda: port_open(port), timeout=30, what=f"Redis {port} to listen")
        self._killed_port = None
        if wait:
            self._wait_replica_linked(port, self.primary_port, timeout)
        return port

    def logs(self) -> dict[str, Path]:
        found = {f"redis-{port}": node.log for port, node in self._nodes.items()}
        found |= {f"sentinel-{i}": s.log for i, s in enumerate(self._sentinels)}
        return found

    def _stop(self) -> None:
        for sentinel in self._sentinels:
            sentinel.kill()
        for node in self._nodes.values():
            node.kill()
