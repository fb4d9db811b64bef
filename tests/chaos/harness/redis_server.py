"""A private Redis on a free port, configured as Axon requires of a Redis without a replica:
an append-only file synced on every write, so a restart after a crash (kill -9) comes back
with every acknowledged write (token streams, leases, the completion log)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from support.server import free_port
from support.services import missing

from .children import Child


class PrivateRedis:
    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            missing("redis-server and redis-cli are needed for the private Redis")
        self.dir = root / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._child: Child | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--dir",
            str(self.dir),
        ]
        self._child = Child(argv, log_path=self.dir / "redis.log").start()
        deadline = time.monotonic() + 30
        while self.cli("PING") != "PONG":
            if not self._child.running() or time.monotonic() > deadline:
                raise RuntimeError(f"the private Redis did not start; see {self.dir}/redis.log")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return result.stdout.strip()

    def kill(self) -> None:
        """A crash: SIGKILL; what was acknowledged is in the append-only file."""
        if self._child is not None:
            self._child.kill()

    def kill_clients(self) -> int:
        """Cut every ordinary client connection (the servers' pools reconnect on their own);
        returns how many were cut."""
        out = self.cli("CLIENT", "KILL", "TYPE", "normal")
        return int(out) if out.isdigit() else 0

    def stop(self) -> None:
        if self._child is not None:
            self._child.stop(10)
