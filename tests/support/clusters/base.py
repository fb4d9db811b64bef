"""What every private datastore here is built on: free ports, processes started in sessions
of their own and killed by pid (with everything they started), waits with a deadline, OS
accounts for the services that refuse to run as root, and the context-manager plumbing of a
cluster (a temporary directory, start on enter, kill and remove on exit)."""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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
# Ports and waiting


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
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{tail(log)}")
        time.sleep(interval)


def tail(log: Path | None, lines: int = 30) -> str:
    """The last ``lines`` of ``log``, headed for an error message ('' if there is none)."""
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(text)


def require(path: str) -> str:
    found = shutil.which(path)
    if found is None:
        raise ClusterUnavailable(f"{path} is not installed")
    return found


class Account:
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


# ---------------------------------------------------------------------------------------
# Processes


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


class Service:
    """One long-running process started in a session of its own, its output in a log.

    It may be started again once killed (same command, same log). Signals go to the pid
    it was started with, never to a process found by name.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        account: Account | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.account = account
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.running():
            raise ClusterError(f"{self.argv[0]} is already running")
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

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process started (not to its children)."""
        if self.running() and self.pid is not None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL it and everything it started, then reap it; a no-op once done."""
        pid = self.pid
        if pid is None or self.process is None:
            return
        kill_tree(pid)
        self.process.wait()


def run_tool(
    argv: Sequence[str],
    *,
    account: Account | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; ``ClusterError`` with its output if it fails (``check``)."""
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


# ---------------------------------------------------------------------------------------
# Clusters


class Cluster:
    """Context-manager plumbing: a temporary directory, start on enter, clean up on exit.

    ``start`` and ``close`` may also be called directly (``close`` is idempotent, and
    ``start`` cleans up after itself when it fails)."""

    prefix = "axon-chaos-"
    startup_seconds: float = 0.0

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._closed = False

    def start(self) -> Self:
        began = time.monotonic()
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def logs(self) -> dict[str, Path]:
        """The log files of the cluster's processes, by a short name (for keeping them
        beside a test's own logs before ``close`` removes the directory)."""
        return {}

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError
