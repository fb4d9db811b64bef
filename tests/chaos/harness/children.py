"""Processes this suite starts for its private datastores, signalled only through the pids
it keeps (never by name: the machine's shared services must never be touched)."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

#: Every child still running, so that an interrupted run leaves none behind.
_LIVE: set[Child] = set()


class Child:
    """One subprocess: its pid, its output in a log file, and signals sent by that pid."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self.user,
                group=self.user,
                # A session of its own: a Ctrl-C at the terminal reaches the test runner,
                # which then stops the child itself (datastores must stop in order).
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait for the process to exit; False if it is still running after ``timeout``."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        _LIVE.discard(self)
        return True

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.running():
            # A stopped process still dies of SIGKILL; nothing else needs sending.
            os.kill(self.pid, signal.SIGKILL)
        self.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
        if self.running():
            os.kill(self.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
            os.kill(self.pid, signal.SIGTERM)
            if not self.wait(timeout):
                self.kill()
        self.wait(1)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` names a process that has not exited (a zombie has exited)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def wait_gone(pids: Sequence[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(pid_alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (read from /proc: no process listing by name)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


@atexit.register
def _kill_leftovers() -> None:
    for child in list(_LIVE):
        child.kill()
