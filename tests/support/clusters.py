"""Private, clustered datastores for fault-injection tests: a Redis primary with a replica
watched by three Sentinels, a PostgreSQL primary with a streaming standby, a three-node
RabbitMQ cluster, and a TCP proxy that can partition a client from a server.

Each one is a context manager that starts its processes on free ports, in its own temporary
directory, and on exit kills exactly the processes it started and removes the directory.
The shared services of the machine (PostgreSQL on 5432, Redis on 6379, RabbitMQ on 5672 and
Erlang's port mapper) are never touched: a failure test is free to kill what it is given.

Only the standard library is used, and every method is synchronous, so a test drives these
from a plain fixture or, for the slower calls, from ``asyncio.to_thread``::

    with RedisSentinelGroup() as redis, BlackholeProxy(redis.primary_port) as link:
        ...                                   # clients use redis.sentinel_addresses
        redis.kill_primary()
        new_port = redis.wait_promoted(timeout=30)

Start-up on two cores: Redis with Sentinels about 2 s, PostgreSQL about 2 s, RabbitMQ
(three nodes) 10-16 s. Missing binaries or OS accounts raise ``ClusterUnavailable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

T = TypeVar("T")

LOCALHOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 120.0


class ClusterUnavailable(RuntimeError):
    """A binary or an OS account that a cluster needs is not on this machine."""


class ClusterError(RuntimeError):
    """A cluster did not reach the state it was asked for in time."""


# ---------------------------------------------------------------------------------------
# Ports, processes and waiting


_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def free_port() -> int:
    """A port nothing listens on, chosen below the kernel's ephemeral range.

    Ports handed out by binding to port 0 come from the ephemeral range, where any outgoing
    connection of the machine may take them before the server that was promised one binds
    it; below that range only listeners compete. Ports are never handed out twice by one
    process, so clusters started side by side do not collide with each other either.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.SystemRandom()
    with _ports_lock:
        for _ in range(1000):
            port = rng.randrange(max(1024, low - 12000), low)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind((LOCALHOST, port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    raise ClusterError("no free port found below the ephemeral range")


def port_open(port: int, host: str = LOCALHOST) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    log: Path | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None (or False); raise
    ``ClusterError`` naming ``what`` after ``timeout`` seconds, with the tail of ``log``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{_tail(log)}")
        time.sleep(interval)


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def _require(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise ClusterUnavailable(f"{path} is not installed")
    return found


class _Account:
    """The OS account a service runs as.

    As root, PostgreSQL and RabbitMQ run as their own packaged accounts (``initdb`` refuses
    root, and the RabbitMQ scripts expect their user); anyone else runs them as themselves.
    """

    def __init__(self, name: str | None) -> None:
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.as_other = False
        if name is not None and os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(name)
            except KeyError as exc:
                raise ClusterUnavailable(f"the {name} OS account does not exist") from exc
            self.uid, self.gid, self.as_other = entry.pw_uid, entry.pw_gid, True

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.as_other:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def own(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)

    def mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        self.own(path)
        return path

    def write(self, path: Path, text: str, mode: int = 0o644) -> Path:
        path.write_text(text)
        path.chmod(mode)
        self.own(path)
        return path


def _proc_stat(pid: int) -> tuple[str, str, int, int] | None:
    """(command name, state, parent pid, session id) of a live process, from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    return name, fields[0], int(fields[1]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _tree(roots: Iterable[int]) -> set[int]:
    """Every live process in the sessions led by ``roots`` or descended from them.

    Both are needed: a child that starts a session of its own (Erlang's helper processes
    do) is found by parentage, and one whose parent died first (PostgreSQL backends after a
    SIGKILLed postmaster) by session. Erlang's port mapper is left out by name: it is shared
    by every node on the machine, and one started by a node here outlives it for the others.
    Callers pass only roots they have not reaped, so no root's pid can have been reused.
    """
    roots = set(roots)
    stats = {pid: stat for pid in _all_pids() if (stat := _proc_stat(pid)) is not None}
    found = {pid for pid, (_, _, _, sid) in stats.items() if sid in roots} | (roots & set(stats))
    grew = True
    while grew:
        children = {pid for pid, (_, _, ppid, _) in stats.items() if ppid in found}
        grew = not children <= found
        found |= children
    return {pid for pid in found if stats[pid][0] != "epmd" and stats[pid][1] != "Z"}


def kill_tree(*roots: int, timeout: float = 10.0) -> None:
    """SIGKILL the processes of ``_tree(roots)`` until none is left alive.

    Zombies are not waited for: a process reparented to an init that does not reap leaves
    one behind, and it holds neither a port nor a file.
    """
    deadline = time.monotonic() + timeout
    while pids := _tree(roots):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise ClusterError(f"processes {sorted(pids)} survived SIGKILL")
        time.sleep(0.05)


class _Service:
    """One long-running process started in a session of its own, its output in a log."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        account: _Account | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.account = account
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                # Its own session: every process it spawns can be found and killed, and a
                # Ctrl-C meant for pytest does not reach it first.
                start_new_session=True,
                **(self.account.popen_kwargs() if self.account else {}),
            )

    @property
    def pid(self) -> int | None:
        """The pid of the process started, until ``kill`` has reaped it."""
        if self.process is None or self.process.returncode is not None:
            return None
        return self.process.pid

    def running(self) -> bool:
        """Whether the process started is alive, without reaping it if it is not."""
        pid = self.pid
        if pid is None:
            return False
        # WNOWAIT leaves an exited process a zombie: its pid, and so the session id its
        # children carry, cannot go to an unrelated process before ``kill`` has looked.
        try:
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return False
        return info is None

    def tree(self) -> set[int]:
        """The live processes it and its children started."""
        pid = self.pid
        return _tree([pid]) if pid is not None else set()

    def kill(self) -> None:
        """SIGKILL it and everything it started, then reap it; a no-op once done."""
        pid = self.pid
        if pid is None or self.process is None:
            return
        kill_tree(pid)
        self.process.wait()


def _run(
    argv: Sequence[str],
    *,
    account: _Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        check=False,
        **(account.popen_kwargs() if account else {}),
    )
    if check and result.returncode != 0:
        raise ClusterError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


class _Cluster:
    """Context-manager plumbing: a temporary directory, start on enter, clean up on exit."""

    prefix = "axon-chaos-"
    startup_seconds: float = 0.0

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._closed = False

    def __enter__(self) -> Self:
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# Redis with Sentinel


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


def _try_redis(port: int, *args: str | int) -> Any:
    try:
        return redis_command(port, *args, timeout=1.0)
    except (OSError, RespError):
        return None


class RedisSentinelGroup(_Cluster):
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
        self.redis_server = _require("redis-server")
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
        self._nodes: dict[int, _Service] = {}
        self._sentinels: list[_Service] = []
        self._killed_port: int | None = None

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """Sentinel addresses, in the ``[(host, port), ...]`` form Sentinel clients take."""
        return [(LOCALHOST, port) for port in self.sentinel_ports]

    @property
    def sentinel_addresses(self) -> list[str]:
        """The same as ``host:port`` strings, as ``AXON_BACKENDS__REDIS_SENTINELS`` takes."""
        return [f"{LOCALHOST}:{port}" for port in self.sentinel_ports]

    def _node(self, port: int, replica_of: int | None) -> _Service:
        node_dir = self.dir / f"redis-{port}"
        node_dir.mkdir(exist_ok=True)
        argv = [
            self.redis_server,
            "--port", str(port),
            "--bind", LOCALHOST,
            "--save", "",
            "--appendonly", "no",
            "--dir", str(node_dir),
            # A full resync streams straight away instead of after Redis 7's 5 s default
            # wait for more replicas, both at start-up and when a node rejoins.
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip
        if replica_of is not None:
            argv += ["--replicaof", LOCALHOST, str(replica_of)]
        return _Service(argv, log=self.dir / f"redis-{port}.log")

    def _start(self) -> None:
        primary = self._nodes[self.primary_port] = self._node(self.primary_port, None)
        replica = self._nodes[self.replica_port] = self._node(self.replica_port, self.primary_port)
        primary.start()
        replica.start()
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
            sentinel = _Service(
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
        replicas = _try_redis(port, "SENTINEL", "REPLICAS", self.master_name)
        peers = _try_redis(port, "SENTINEL", "SENTINELS", self.master_name)
        return bool(replicas) and peers is not None and len(peers) == len(self.sentinel_ports) - 1

    def _wait_replica_linked(self, replica: int, primary: int, timeout: float) -> None:
        def linked() -> bool:
            info = _try_redis(replica, "INFO", "replication")
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
        reply = _try_redis(sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1]) if isinstance(reply, list) and len(reply) == 2 else None

    def role(self, port: int) -> str | None:
        """``master`` or ``slave`` as the node on ``port`` reports, or None when it is down."""
        reply = _try_redis(port, "ROLE")
        return str(reply[0]) if isinstance(reply, list) and reply else None

    def kill_primary(self) -> int:
        """SIGKILL the current primary; return its port."""
        port = self.primary_port
        self._nodes[port].kill()
        self._killed_port = port
        return port

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
        node = self._nodes[port] = self._node(port, None)
        node.start()
        wait_for(lambda: port_open(port), timeout=30, what=f"Redis {port} to listen")
        self._killed_port = None
        if wait:
            self._wait_replica_linked(port, self.primary_port, timeout)
        return port

    def _stop(self) -> None:
        for service in [*self._sentinels, *self._nodes.values()]:
            service.kill()


# ---------------------------------------------------------------------------------------
# PostgreSQL with a streaming standby


def _postgres_bin() -> Path:
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "postgres").exists():
        return preferred
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if not versions:
        raise ClusterUnavailable("PostgreSQL server binaries are not installed")
    return versions[-1].parent


class PostgresPair(_Cluster):
    """A PostgreSQL primary and a hot standby streaming from it, on loopback with trust auth.

    ``primary`` and ``standby`` name the two servers by how they started; after
    ``promote_standby`` the standby is the writable one and ``dsn`` (multi-host, read-write)
    finds it. Restarting the old primary after a promotion gives two writable servers: it
    does not rejoin as a standby (that needs ``pg_rewind``).
    """

    prefix = "axon-chaos-pg-"

    def __init__(self, *, database: str = "postgres") -> None:
        self.bin = _postgres_bin()
        self.account = _Account("postgres")
        super().__init__()
        self.account.own(self.dir)
        self.database = database
        self.primary_port = free_port()
        self.standby_port = free_port()
        self.primary_data = self.dir / "primary" / "data"
        self.standby_data = self.dir / "standby" / "data"
        self._lock = threading.RLock()
        self._restart: threading.Timer | None = None
        self._servers: dict[Path, _Service] = {}
        self.promoted = False

    # -- addresses

    def dsn_for(self, port: int, database: str | None = None) -> str:
        return f"postgresql://postgres@{LOCALHOST}:{port}/{database or self.database}"

    @property
    def primary_dsn(self) -> str:
        return self.dsn_for(self.primary_port)

    @property
    def standby_dsn(self) -> str:
        return self.dsn_for(self.standby_port)

    @property
    def dsn(self) -> str:
        """Both servers in one libpq/asyncpg DSN that connects to whichever accepts writes."""
        return (
            f"postgresql://postgres@{LOCALHOST}:{self.primary_port},"
            f"{LOCALHOST}:{self.standby_port}/{self.database}?target_session_attrs=read-write"
        )

    @property
    def sqlalchemy_url(self) -> str:
        """The same for SQLAlchemy's asyncpg dialect, which spells hosts as repeated
        ``host`` query parameters."""
        return (
            f"postgresql+asyncpg://postgres@/{self.database}"
            f"?host={LOCALHOST}:{self.primary_port}&host={LOCALHOST}:{self.standby_port}"
            "&target_session_attrs=read-write"
        )

    # -- plumbing

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "LANG": "C"}

    def _tool(self, name: str, *args: str, timeout: float = 60.0) -> str:
        result = _run(
            [str(self.bin / name), *args],
            account=self.account,
            env=self._env(),
            cwd=self.dir,
            timeout=timeout,
        )
        return result.stdout

    def sql(self, port: int, query: str, *, database: str | None = None) -> str:
        """Run one statement with psql on ``port`` and return its unaligned output."""
        return self._tool(
            "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
            "-h", LOCALHOST, "-p", str(port), "-U", "postgres",
            "-d", database or self.database, "-c", query,
            timeout=30,
        ).strip()  # fmt: skip

    def _try_sql(self, port: int, query: str) -> str | None:
        try:
            return self.sql(port, query)
        except (ClusterError, subprocess.TimeoutExpired):
            return None

    def _start_server(self, data: Path, port: int) -> None:
        """Start ``postgres`` on ``data`` as a child of this process and wait until it
        accepts connections.

        Not through ``pg_ctl start``, which leaves the postmaster to init: where init does
        not reap, a SIGKILLed postmaster stays a zombie whose pid, still in
        ``postmaster.pid``, makes the next start refuse to run. A child is reaped here.
        """
        sockets = self.account.mkdir(data.parent / "sockets")
        server = _Service(
            # The socket lives beside the data directory, not in it, so a base backup does
            # not copy it, and nowhere near the shared server's /var/run/postgresql.
            [str(self.bin / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)],
            log=data.parent / "postgres.log",
            env=self._env(),
            cwd=data.parent,
            account=self.account,
        )
        self._servers[data] = server
        server.start()

        def ready() -> bool:
            if not server.running():
                raise ClusterError(f"postgres on {data} exited{_tail(server.log)}")
            # The postmaster's status line in its lock file, as pg_ctl -w reads it; the
            # file must be this postmaster's, not the one a killed server left behind.
            lines = self._lock_file(data)
            return (
                len(lines) > 7
                and lines[0].strip() == str(server.pid)
                and lines[7].strip() in ("ready", "standby")
            )

        wait_for(ready, timeout=STARTUP_TIMEOUT_S, what=f"postgres on {data}", log=server.log)

    def _lock_file(self, data: Path) -> list[str]:
        try:
            return (data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return []

    def postmaster_pid(self, data: Path) -> int | None:
        """The postmaster's pid while it runs, else None."""
        server = self._servers.get(data)
        return server.pid if server is not None and server.running() else None

    def _start(self) -> None:
        self.account.mkdir(self.primary_data.parent)
        self.account.mkdir(self.standby_data.parent)
        self._tool(
            "initdb", "-D", str(self.primary_data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        settings = (
            f"listen_addresses = '{LOCALHOST}'\n"
            "wal_level = replica\n"
            "hot_standby = on\n"
            "max_wal_senders = 10\n"
            # Enough WAL kept for a standby that was cut off for a while to catch up.
            "wal_keep_size = 256MB\n"
            # A standby that lost its primary retries every half second, not every 5 s.
            "wal_retrieve_retry_interval = 500ms\n"
            # Process kills are the faults here, not power cuts: the OS keeps every write,
            # so skipping fsync is safe and makes start-up and checkpoints fast.
            "fsync = off\n"
            "max_connections = 50\n"
        )
        with (self.primary_data / "postgresql.conf").open("a") as conf:
            conf.write(settings)
        self._start_server(self.primary_data, self.primary_port)
        if self.database != "postgres":
            # Created before the base backup, so the standby has it too.
            self.sql(self.primary_port, f'CREATE DATABASE "{self.database}"', database="postgres")
        # -R writes standby.signal and primary_conninfo; the settings above come along.
        self._tool(
            "pg_basebackup", "-h", LOCALHOST, "-p", str(self.primary_port), "-U", "postgres",
            "-D", str(self.standby_data), "-R", "-X", "stream", "--checkpoint=fast",
            "--no-sync",
        )  # fmt: skip
        self._start_server(self.standby_data, self.standby_port)
        self.wait_streaming(STARTUP_TIMEOUT_S)

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait until the standby streams WAL from the primary."""
        wait_for(
            lambda: (
                self._try_sql(self.standby_port, "SELECT status FROM pg_stat_wal_receiver")
                == "streaming"
            ),
            timeout=timeout,
            what="the standby to stream from the primary",
            log=self.standby_data.parent / "postgres.log",
        )

    # -- faults

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster, then whatever of the server is still alive.

        Killing the postmaster alone would leave its backends serving open connections for
        a moment and holding the shared memory, which stops a restart; a crashed host
        leaves nothing behind either.
        """
        with self._lock:
            pid = self.postmaster_pid(self.primary_data)
            if pid is None:
                raise ClusterError("the primary is not running")
            os.kill(pid, signal.SIGKILL)
            self._servers[self.primary_data].kill()

    def promote_standby(self) -> None:
        """Promote the standby (``pg_ctl promote``) and wait until it accepts writes."""
        self._tool("pg_ctl", "promote", "-w", "-t", "60", "-D", str(self.standby_data))
        self.promoted = True

    def stop_primary(self, duration: float | None = None) -> None:
        """Stop the primary cleanly (``pg_ctl stop -m fast``); with ``duration``, start it
        again that many seconds later, in the background, so a test can watch clients ride
        out the outage. ``start_primary`` ends the outage early."""
        with self._lock:
            self._cancel_restart()
            self._tool(
                "pg_ctl", "stop", "-w", "-t", "60", "-m", "fast", "-D", str(self.primary_data)
            )
            self._servers[self.primary_data].kill()
            if duration is not None:
                self._restart = threading.Timer(duration, self._scheduled_start)
                self._restart.daemon = True
                self._restart.start()

    def start_primary(self) -> None:
        """Start the primary if it is down and wait until it accepts connections."""
        with self._lock:
            self._cancel_restart()
            if self._closed or self.postmaster_pid(self.primary_data) is not None:
                return
            self._start_server(self.primary_data, self.primary_port)

    def _scheduled_start(self) -> None:
        with self._lock:
            self._restart = None
            self.start_primary()

    def _cancel_restart(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart = None

    def _stop(self) -> None:
        with self._lock:
            self._cancel_restart()
            for server in self._servers.values():
                server.kill()


# ---------------------------------------------------------------------------------------
# RabbitMQ cluster


RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class RabbitCluster(_Cluster):
    """``size`` RabbitMQ nodes (three by default) in one cluster, on loopback.

    Nodes are addressed by index, 0 to size-1. Node names are unique per run
    (``axonchaos-<tag>-<n>@localhost``), and the cluster has an Erlang cookie of its own,
    so no command aimed at it can reach the shared broker, nor the other way round.

    The nodes boot in parallel and form the cluster while booting: node 0 starts alone,
    and the others name it as their one peer through classic peer discovery, retrying
    until it is up. That is half the time of booting three single nodes and then joining
    two of them with ``stop_app``/``join_cluster``/``start_app`` (measured on two cores);
    the join commands remain the fallback for a node that came up on its own.
    """

    prefix = "axon-chaos-rabbit-"

    def __init__(self, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        for tool in ("rabbitmq-server", "rabbitmqctl", "rabbitmq-diagnostics"):
            if not (RABBITMQ_BIN / tool).exists():
                raise ClusterUnavailable(f"{RABBITMQ_BIN / tool} is not installed")
        self.account = _Account("rabbitmq")
        super().__init__()
        self.account.own(self.dir)
        tag = secrets.token_hex(4)
        self.size = size
        self.node_names = [f"axonchaos-{tag}-{n + 1}@localhost" for n in range(size)]
        self.amqp_ports = [free_port() for _ in range(size)]
        self.dist_ports = [free_port() for _ in range(size)]
        self.home = self.dir / "home"
        self._nodes: list[_Service] = []

    @property
    def urls(self) -> list[str]:
        return [self.url(index) for index in range(self.size)]

    def url(self, index: int) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.amqp_ports[index]}/"

    def node_dir(self, index: int) -> Path:
        return self.dir / f"node-{index + 1}"

    def _env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # Erlang reads the cookie from $HOME/.erlang.cookie: this cluster's own.
            "HOME": str(self.home),
            # Instead of the machine's rabbitmq-env.conf, which names the shared node.
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            **(extra or {}),
        }

    def _node_env(self, index: int) -> dict[str, str]:
        node = self.node_dir(index)
        return self._env(
            {
                "RABBITMQ_NODENAME": self.node_names[index],
                "RABBITMQ_NODE_PORT": str(self.amqp_ports[index]),
                "RABBITMQ_DIST_PORT": str(self.dist_ports[index]),
                "RABBITMQ_MNESIA_BASE": str(node / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(node / "enabled_plugins"),
                "RABBITMQ_PID_FILE": str(node / "rabbit.pid"),
                "RABBITMQ_CONFIG_FILE": str(node / "rabbitmq.conf"),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node / "advanced.config"),
            }
        )

    def _prepare(self) -> None:
        account = self.account
        account.mkdir(self.home)
        account.write(self.home / ".erlang.cookie", secrets.token_hex(20).upper(), 0o400)
        # Keeps Erlang distribution on loopback, as the machine's own file does.
        account.write(
            self.dir / "rabbitmq-env.conf",
            "ERL_EPMD_ADDRESS=127.0.0.1\n"
            'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n',
        )
        for index in range(self.size):
            node = account.mkdir(self.node_dir(index))
            account.mkdir(node / "log")
            account.write(node / "enabled_plugins", "[].\n")
            conf = f"listeners.tcp.local = {LOCALHOST}:{self.amqp_ports[index]}\n"
            if index > 0:
                conf += (
                    "cluster_formation.peer_discovery_backend = classic_config\n"
                    f"cluster_formation.classic_config.nodes.1 = {self.node_names[0]}\n"
                    # Peer discovery waits up to a minute at random before it looks, to
                    # stagger nodes that could race to form a cluster; these cannot (only
                    # node 0 forms one), so they look at once and retry until it is up.
                    "cluster_formation.randomized_startup_delay_range.min = 0\n"
                    "cluster_formation.randomized_startup_delay_range.max = 1\n"
                    "cluster_formation.discovery_retry_limit = 240\n"
                    "cluster_formation.discovery_retry_interval = 500\n"
                )
            account.write(node / "rabbitmq.conf", conf)
            self._nodes.append(
                _Service(
                    [str(RABBITMQ_BIN / "rabbitmq-server")],
                    log=node / "stdout.log",
                    env=self._node_env(index),
                    cwd=node,
                    account=account,
                )
            )

    def _start(self) -> None:
        self._prepare()
        for node in self._nodes:
            node.start()
        for index in range(self.size):
            self._wait_listening(index, STARTUP_TIMEOUT_S)
        missing = set(self.node_names) - set(self.running_nodes(0))
        if missing:
            # A node that did not find node 0 in time started on its own: join it now.
            def join(name: str) -> None:
                index = self.node_names.index(name)
                self.ctl(index, "stop_app")
                self.ctl(index, "join_cluster", self.node_names[0])
                self.ctl(index, "start_app")

            with ThreadPoolExecutor(len(missing)) as pool:
                list(pool.map(join, sorted(missing)))
            self._wait_cluster(STARTUP_TIMEOUT_S)

    def _wait_listening(self, index: int, timeout: float) -> None:
        node = self._nodes[index]

        def up() -> bool:
            if not node.running():
                raise ClusterError(
                    f"RabbitMQ node {self.node_names[index]} exited{_tail(node.log)}"
                    f"{_tail(self._log_file(index))}"
                )
            # The AMQP listener opens among the last boot steps, after the node has joined
            # its cluster and synced its tables.
            return port_open(self.amqp_ports[index])

        wait_for(
            up,
            timeout=timeout,
            interval=0.2,
            what=f"RabbitMQ node {self.node_names[index]}",
            log=self._log_file(index),
        )

    def _log_file(self, index: int) -> Path:
        return self.node_dir(index) / "log" / f"{self.node_names[index]}.log"

    def _wait_cluster(self, timeout: float) -> None:
        wait_for(
            lambda: set(self.running_nodes(0)) == set(self.node_names),
            timeout=timeout,
            interval=0.5,
            what="every RabbitMQ node to be running in one cluster",
        )

    def ctl(self, index: int, *args: str, tool: str = "rabbitmqctl", check: bool = True) -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` (or another CLI tool) against node ``index``."""
        result = _run(
            [str(RABBITMQ_BIN / tool), "-n", self.node_names[index], *args],
            account=self.account,
            env=self._env(),
            cwd=self.home,
            timeout=120,
            check=check,
        )
        return result.stdout

    def running_nodes(self, index: int) -> list[str]:
        """The cluster's running nodes as node ``index`` sees them ([] if it cannot tell)."""
        try:
            status = json.loads(self.ctl(index, "cluster_status", "--formatter", "json"))
        except (ClusterError, ValueError):
            return []
        return [str(name) for name in status.get("running_nodes", [])]

    def beam_pid(self, index: int) -> int | None:
        """The Erlang VM's pid, from the node's pid file, while it is alive."""
        try:
            pid = int((self.node_dir(index) / "rabbit.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        # A pid file left by a node that died on its own may name a reused pid: only a
        # process this node's start script started is taken.
        return pid if pid in self._nodes[index].tree() else None

    def kill_node(self, index: int) -> None:
        """SIGKILL node ``index``'s Erlang VM, then the start script that waited on it."""
        pid = self.beam_pid(index)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        # The script traps signals and would try a clean stop; it has nothing left to stop.
        self._nodes[index].kill()
        with contextlib.suppress(OSError):
            (self.node_dir(index) / "rabbit.pid").unlink()

    def restart_node(self, index: int, *, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Start a killed node again and wait until it has rejoined and listens."""
        if self._nodes[index].running():
            raise ClusterError(f"node {self.node_names[index]} is running")
        self._nodes[index].start()
        self._wait_listening(index, timeout)

    def memory_alarm_active(self, index: int) -> bool:
        """Whether node ``index`` has raised a resource alarm."""
        result = _run(
            [
                str(RABBITMQ_BIN / "rabbitmq-diagnostics"),
                "-n", self.node_names[index], "check_local_alarms",
            ],
            account=self.account,
            env=self._env(),
            cwd=self.home,
            timeout=60,
            check=False,
        )  # fmt: skip
        return result.returncode != 0

    def set_memory_alarm(self, index: int, on: bool, *, wait: bool = True) -> None:
        """Raise (or clear) node ``index``'s memory alarm by moving its high watermark.

        While it is raised, publishers on every node of the cluster are blocked (RabbitMQ
        makes resource alarms cluster-wide) and consumers carry on. The watermark is not
        saved: a restarted node is back at the default 0.4."""
        self.ctl(index, "set_vm_memory_high_watermark", "0.0000001" if on else "0.4")
        if wait:
            wait_for(
                lambda: self.memory_alarm_active(index) == on,
                timeout=30,
                interval=0.5,
                what=f"the memory alarm on {self.node_names[index]} to be {on}",
            )

    def _stop(self) -> None:
        for node in self._nodes:
            node.kill()


# ---------------------------------------------------------------------------------------
# TCP proxy for partitions


class _Link:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class BlackholeProxy:
    """A TCP proxy on a free loopback port that forwards to ``target_port``.

    ``blackhole()`` stops bytes in both directions while every connection stays open, as in
    a network partition: what is sent meanwhile waits (in the proxy and the kernel's
    buffers) and arrives after ``restore()``, as TCP's retransmissions would deliver it once
    a partition heals. A connection opened during a blackhole is accepted but reaches the
    target only after ``restore()``. ``cut()`` closes every open connection at both ends.

    It runs its own event loop in a thread, so it works the same from synchronous code and
    from any test's event loop.
    """

    def __init__(self, target_port: int, *, target_host: str = LOCALHOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._links: set[_Link] = set()
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    @property
    def connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        self._call(self._serve())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _serve(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, LOCALHOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()
            if self._closing:
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return
            pumps = [
                asyncio.ensure_future(self._pump(reader, link.upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            # Either side closing ends the connection; none of the protocols proxied here
            # keeps talking over a half-closed one.
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                # Held here during a blackhole: neither the bytes nor the close go through.
                await self._flowing.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

    def blackhole(self) -> None:
        async def clear() -> None:
            self._flowing.clear()

        self._call(clear())

    def restore(self) -> None:
        async def set_() -> None:
            self._flowing.set()

        self._call(set_())

    def cut(self) -> None:
        """Close every open connection at once, both ends, without flushing."""

        async def abort_all() -> None:
            links = list(self._links)
            for link in links:
                link.abort()
            # Return once the handlers have let go, so ``connections`` reads 0 after a cut.
            for _ in range(200):
                if not any(link in self._links for link in links):
                    return
                await asyncio.sleep(0.01)

        self._call(abort_all())

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            self._closing = True
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.abort()
            # Handlers held by a blackhole wake up, find their sockets closed and return;
            # cancelling them instead makes asyncio's stream server log each one.
            self._flowing.set()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=5)
                for task in pending:
                    task.cancel()

        self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
