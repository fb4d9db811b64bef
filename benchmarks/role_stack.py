"""The stack the role cost benchmark (`benchmarks/role_cost.py`) measures: a Redis server
and a RabbitMQ node of its own (their CPU, memory and command counts are the run's alone),
and `axon up` (one gateway, one session manager, one worker) on them and on a database of
its own on the local PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import httpx

from burst import cpu_s, free_base_port, start_stack, stop_stack
from role_samplers import Snapshot, pg_figures
from serving import Launched, _cleanup

MODEL = "smollm2-135m-instruct"


class PrivateRedis:
    """A redis-server of this run on a free port, without persistence; stopped by its pid."""

    def __init__(self, work: Path) -> None:
        self.port = free_base_port()
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(work)),
                *("--maxclients", "10000"),
            ],
            stdout=(work / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        import redis

        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def info(self) -> dict[str, float]:
        """Memory, connections and command counts (``cmd:NAME``) now."""
        memory = self.client.info("memory")
        clients = self.client.info("clients")
        stats = self.client.info("stats")
        out: dict[str, float] = {
            "used_memory": float(memory["used_memory"]),
            "connected_clients": float(clients["connected_clients"]),
            "commands": float(stats["total_commands_processed"]),
            "cpu_s": cpu_s(self.proc.pid),
        }
        for name, value in self.client.info("commandstats").items():
            out[f"cmd:{name.removeprefix('cmdstat_')}"] = float(value["calls"])
        return out

    def memory_of(self, pattern: str) -> dict[str, int]:
        """``MEMORY USAGE`` (every element counted) of each key matching ``pattern``."""
        keys = [k.decode() for k in self.client.scan_iter(match=pattern, count=1000)]
        return {k: int(self.client.memory_usage(k, samples=0) or 0) for k in keys}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class PrivateRabbitMQ:
    """A RabbitMQ node of this run (its own name, ports and data directory, run by
    Debian's wrapper as the ``rabbitmq`` user): its CPU is this run's alone. Stopped with
    ``rabbitmqctl stop``, then by its pid."""

    def __init__(self, work: Path) -> None:
        home = work / "rabbitmq"
        home.mkdir()
        work.chmod(0o755)  # the node runs as `rabbitmq` and must reach its directory
        self.port = free_base_port()
        (home / "enabled_plugins").write_text("[].\n")
        (home / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        for path in (home, *home.iterdir()):
            shutil.chown(path, "rabbitmq", "rabbitmq")
        self.node = f"axon-capacity-{uuid.uuid4().hex[:8]}@localhost"
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 100),
            "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(home / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        }
        self.pid_file = home / "rabbit.pid"
        self.proc = subprocess.Popen(
            ["rabbitmq-server"],
            env=env,
            stdout=(work / "rabbitmq.out").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}/"
        deadline = time.monotonic() + 90
        while self._ctl("await_startup", timeout=30) != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"RabbitMQ node {self.node} did not start; see {work}")
            time.sleep(1)
        self.pid = int(self.pid_file.read_text().strip())

    def _ctl(self, *args: str, timeout: float) -> int:
        try:
            done = subprocess.run(
                ["rabbitmqctl", "-n", self.node, *args], capture_output=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return -1
        return done.returncode

    def stop(self) -> None:
        self._ctl("stop", timeout=60)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(self.pid_file.read_text().strip()), signal.SIGKILL)


def warm(url: str, timeout_s: float = 60) -> None:
    """One short request through the whole stack (a ready stack may still not serve)."""
    deadline = time.monotonic() + timeout_s
    body = {"messages": [{"role": "user", "content": "Warm up."}], "max_tokens": 2}
    while True:
        try:
            if httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the stack does not answer chat requests")
        time.sleep(0.5)


class Stack:
    """One `axon up` of this benchmark with its private Redis and database."""

    def __init__(
        self, work: Path, redis: PrivateRedis, rabbit: PrivateRabbitMQ, settings: dict[str, str]
    ) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.database = f"axon_capacity_{self.tag}"
        self.dsn = f"postgresql://postgres@127.0.0.1:5432/{self.database}"
        self.redis = redis
        self.rabbit = rabbit
        self.prefix = f"axon-capacity-{self.tag}:"
        inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("AXON_")}
        self.env = {
            **inherited,
            "AXON_DATA_DIR": str(work),
            "AXON_STORE__URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{self.database}",
            "AXON_BACKENDS__REDIS_URL": redis.url,
            "AXON_BACKENDS__RABBITMQ_URL": rabbit.url,
            "AXON_BACKENDS__REDIS_PREFIX": self.prefix,
            "AXON_BACKENDS__RABBITMQ_PREFIX": f"axon-capacity-{self.tag}",
            "AXON_SERVER__HOST": "127.0.0.1",
            "AXON_ENGINE__KIND": "fake",
            "AXON_LIMITS__TENANT_MAX_STREAMS": "0",
            "AXON_LOG__LEVEL": "WARNING",
            **settings,
        }
        self.base = free_base_port()
        self.url = f"http://127.0.0.1:{self.base}"
        self.up: Launched | None = None
        self.pids: dict[str, int] = {}
        self.log = work / f"up-{self.tag}.log"

    def __enter__(self) -> Stack:
        try:
            self.up, self.pids = start_stack(self.env, self.base, self.log, None)
            warm(self.url)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        if self.up is not None:
            stop_stack(self.up, self.pids)
        try:
            asyncio.run(_cleanup(self.env, MODEL))
        except Exception as exc:  # report it, never hide the figures
            print(f"cleanup of {self.database} failed: {type(exc).__name__}: {exc}")

    def snapshot(self) -> Snapshot:
        return Snapshot(
            time.monotonic(),
            {role: cpu_s(pid) for role, pid in self.pids.items()},
            self.redis.info(),
            asyncio.run(pg_figures(self.dsn, self.database)),
            cpu_s(self.rabbit.pid),
        )

    def idle_rates(self, seconds: float = 10.0) -> dict[str, float]:
        """CPU seconds per second each role, Redis and RabbitMQ spend with no load (polls,
        heartbeats, timers), to take out of what the runs measure."""
        pids = {**self.pids, "redis": self.redis.proc.pid, "rabbitmq": self.rabbit.pid}
        before = {name: cpu_s(pid) for name, pid in pids.items()}
        time.sleep(seconds)
        return {name: (cpu_s(pid) - before[name]) / seconds for name, pid in pids.items()}

    def streams_left(self, replies: Iterable[str]) -> tuple[float, float]:
        """Mean Redis bytes and entries a finished reply leaves for re-attach: its token
        stream and its lease (keyed by tenant; these callers are anonymous: ``default``)."""
        sizes: list[int] = []
        entries: list[int] = []
        for reply in replies:
            stream = f"{self.prefix}stream:default/{reply}"
            lease = f"{self.prefix}lease:default/{reply}"
            size = sum(
                int(self.redis.client.memory_usage(k, samples=0) or 0) for k in (stream, lease)
            )
            if size:
                sizes.append(size)
                entries.append(int(self.redis.client.xlen(stream)))
        if not sizes:
            return 0.0, 0.0
        return sum(sizes) / len(sizes), sum(entries) / len(entries)
