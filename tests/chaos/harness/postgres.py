"""A private PostgreSQL 15 on a free port, run as the ``postgres`` user on a directory it
owns, with trust authentication. The postmaster is this suite's own child, so its pid is
the one in ``postmaster.pid`` and a crash is one SIGKILL to it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from support.server import free_port
from support.services import missing

from .children import Child, children_of, wait_gone

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "postgres"


class PrivatePostgres:
    def __init__(self, root: Path, database: str = "axon") -> None:
        if not (BIN / "postgres").exists():
            missing(f"PostgreSQL 15 is needed for the private PostgreSQL ({BIN})")
        self.dir = root / "postgres"
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.dir, USER, USER)
        os.chmod(self.dir, 0o700)
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"
        self._child: Child | None = None

    def start(self) -> None:
        if not self.data.exists():
            subprocess.run(
                [
                    str(BIN / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    USER,
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
                cwd=self.dir,
                user=USER,
                group=USER,
                capture_output=True,
                check=True,
                timeout=120,
            )
        argv = [str(BIN / "postgres"), "-D", str(self.data), "-p", str(self.port)]
        argv += ["-k", str(self.dir), "-c", "listen_addresses=127.0.0.1"]
        # A SIGKILL of the server keeps what the kernel has cached, so fsync buys nothing
        # here and costs the shared disk a lot.
        argv += ["-c", "fsync=off", "-c", "max_connections=300"]
        self._child = Child(argv, log_path=self.dir / "postgres.log", cwd=self.dir, user=USER)
        self._child.start()
        deadline = time.monotonic() + 60
        while not self.ready():
            if not self._child.running() or time.monotonic() > deadline:
                raise RuntimeError(f"the private PostgreSQL did not start; see {self.dir}")
            time.sleep(0.1)

    def ready(self) -> bool:
        result = subprocess.run(
            [str(BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
            timeout=10,
        )
        return result.returncode == 0

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster (the pid in postmaster.pid); its backends
        notice their parent died and exit, and the next start runs crash recovery."""
        if self._child is None or not self._child.running():
            return
        with (self.data / "postmaster.pid").open() as f:
            pid = int(f.readline())
        assert pid == self._child.pid, "postmaster.pid names another process"
        backends = children_of(pid)
        self._child.kill()
        # A restart refuses to start while old backends still hold the shared memory.
        wait_gone(backends, 30)

    def stop(self) -> None:
        if self._child is not None:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave.
            self._child.signal(signal.SIGCONT)
            self._child.signal(signal.SIGINT)
            if not self._child.wait(30):
                self._child.kill()
