"""Keep child processes running: restart one that exits, after an exponential backoff, and
stop them all, role by role, when asked.

One thread polls every child. A signal handler only counts stop requests, and the loop acts
on them: a signal never lands between a spawn and its bookkeeping, or in the middle of a stop.
"""

from __future__ import annotations

import itertools
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType

log = logging.getLogger(__name__)

#: SIGHUP too: the children run in their own process group (see ``_launch``), so a closed
#: terminal would otherwise end the supervisor alone and leave them running.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass(frozen=True)
class ChildSpec:
    """Everything needed to start a child again, identically, after it exits."""

    role: str
    port: int
    env: Mapping[str, str]
    #: The command; empty means ``python -m axon <role>``.
    argv: Sequence[str] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return list(self.argv) or [sys.executable, "-m", "axon", self.role]


@dataclass(frozen=True)
class Backoff:
    """Delay before a restart. It doubles with each exit that follows a short run, so a child
    that crashes at start costs little CPU and log; once a child has stayed up for
    ``reset_after_s`` it counts as healthy again, and its next exit restarts it quickly."""

    initial_s: float = 0.5
    cap_s: float = 30.0
    reset_after_s: float = 60.0

    def next_delay(self, previous_s: float, uptime_s: float) -> float:
        if previous_s <= 0 or uptime_s >= self.reset_after_s:
            return self.initial_s
        return min(self.cap_s, previous_s * 2)


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0
    #: The delay before the latest restart: the next one doubles it.
    delay_s: float = 0.0
    #: When the pending restart is due (``time.monotonic()``); None while the child runs.
    restart_at: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        return f"{self.spec.role} on port {self.spec.port} (pid {self.pid})"

    def fields(self) -> dict[str, object]:
        """The same facts as ``describe``, as fields of a structured log line."""
        return {"role": self.spec.role, "port": self.spec.port, "pid": self.pid}


def _exit_reason(code: int) -> tuple[str, dict[str, object]]:
    if code < 0:  # Popen's convention: killed by signal -code.
        name = signal.Signals(-code).name
        return f"was killed by {name}", {"signal": name}
    return f"exited with code {code}", {"exit_code": code}


class Supervisor:
    def __init__(
        self, backoff: Backoff | None = None, *, grace_s: float = 30.0, poll_s: float = 0.2
    ) -> None:
        self.backoff = backoff or Backoff()
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.children: list[Child] = []
        self._stop_requests = 0

    def install_signal_handlers(self) -> None:
        """SIGINT, SIGTERM and SIGHUP ask for a stop; a second one ends the grace period."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.request_stop()

    def request_stop(self) -> None:
        self._stop_requests += 1

    @property
    def stopping(self) -> bool:
        return self._stop_requests > 0

    def start(self, spec: ChildSpec) -> Child:
        child = Child(spec, self._launch(spec), time.monotonic())
        self.children.append(child)
        return child

    @staticmethod
    def _launch(spec: ChildSpec) -> subprocess.Popen[bytes]:
        # A process group of its own: the terminal's Ctrl-C then reaches the supervisor
        # alone, which stops the children front to back instead of all at once.
        return subprocess.Popen(
            spec.command(),
            env={**spec.env, "AXON_SERVER__PORT": str(spec.port)},
            process_group=0,
        )

    def run(self) -> None:
        """Keep every child running until a stop is requested."""
        while not self.stopping:
            self.check()
            time.sleep(self.poll_s)

    def check(self) -> None:
        """One pass: schedule a restart for each child that exited, run those that are due."""
        now = time.monotonic()
        for child in self.children:
            if child.restart_at is None:
                code = child.proc.poll()
                if code is not None:
                    self._schedule(child, code, now)
            elif now >= child.restart_at:
                self._restart(child, now)

    def _schedule(self, child: Child, code: int, now: float) -> None:
        uptime = now - child.started
        child.delay_s = self.backoff.next_delay(child.delay_s, uptime)
        child.restart_at = now + child.delay_s
        reason, fields = _exit_reason(code)
        log.warning(
            "%s %s after %.1f s; restart %d in %g s",
            child.describe(),
            reason,
            uptime,
            child.restarts + 1,
            child.delay_s,
            extra={
                **child.fields(),
                **fields,
                "uptime_s": round(uptime, 3),
                "restart": child.restarts + 1,
                "delay_s": child.delay_s,
            },
        )

    def _restart(self, child: Child, now: float) -> None:
        try:
            child.proc = self._launch(child.spec)
        except OSError as exc:  # e.g. no process slot left: try again, later still
            child.delay_s = self.backoff.next_delay(child.delay_s, 0.0)
            child.restart_at = now + child.delay_s
            log.error(
                "cannot restart %s: %s; next try in %g s",
                child.describe(),
                exc,
                child.delay_s,
                extra={**child.fields(), "delay_s": child.delay_s},
            )
            return
        child.started, child.restart_at = now, None
        child.restarts += 1
        log.warning(
            "%s on port %d restarted as pid %d (restart %d)",
            child.spec.role,
            child.spec.port,
            child.pid,
            child.restarts,
            extra={**child.fields(), "restart": child.restarts},
        )

    def stop(self, order: Sequence[str] = ()) -> None:
        """Stop every child: SIGTERM, a grace period for it to finish what it is doing, then
        SIGKILL. One role at a time, in ``order`` (roles not named go last): front to back,
        so the processes behind a stopping one still serve the work it is finishing."""
        self._stop_requests = max(self._stop_requests, 1)
        ranks = {role: rank for rank, role in enumerate(order)}

        def rank(child: Child) -> int:
            return ranks.get(child.spec.role, len(order))

        for _, group in itertools.groupby(sorted(self.children, key=rank), key=rank):
            self._stop_all(list(group))

    def _stop_all(self, children: list[Child]) -> None:
        # A child waiting for its restart has no process to stop.
        running = [c for c in children if c.restart_at is None and c.proc.poll() is None]
        for child in running:
            log.info("stopping %s", child.describe(), extra=child.fields())
            child.proc.terminate()
        deadline = time.monotonic() + self.grace_s
        # A second stop request (another Ctrl-C) means "now": the grace period ends.
        while (
            any(c.proc.poll() is None for c in running)
            and time.monotonic() < deadline
            and self._stop_requests < 2
        ):
            time.sleep(self.poll_s)
        for child in running:
            if child.proc.poll() is None:
                log.warning("killing %s", child.describe(), extra=child.fields())
                child.proc.kill()
            child.proc.wait()
