"""The supervisor's restart and stop policy, on trivial child commands (no axon process)."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from axon.cli.supervisor import Backoff, ChildSpec, Supervisor


def _spec(code: str, role: str = "worker", port: int = 1) -> ChildSpec:
    return ChildSpec(role, port, {}, argv=(sys.executable, "-c", code))


def _until(condition: Callable[[], bool], supervisor: Supervisor, timeout: float = 20.0) -> None:
    """Drive the supervisor's loop by hand until ``condition`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        supervisor.check()
        time.sleep(0.01)


@pytest.fixture
def supervisor() -> Iterator[Supervisor]:
    s = Supervisor(Backoff(initial_s=0.05, cap_s=0.2, reset_after_s=60.0), grace_s=5, poll_s=0.01)
    try:
        yield s
    finally:
        s.stop()


def test_delay_doubles_up_to_the_cap_and_resets_after_a_long_run() -> None:
    backoff = Backoff(initial_s=0.5, cap_s=30.0, reset_after_s=60.0)
    delays = [0.0]
    for _ in range(9):
        delays.append(backoff.next_delay(delays[-1], uptime_s=1.0))
    assert delays[1:] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff.next_delay(30.0, uptime_s=60.0) == 0.5


def test_a_crashing_child_is_restarted_with_backoff_and_logged(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="axon.cli.supervisor")
    child = supervisor.start(_spec("import sys; sys.exit(3)", port=8201))
    pids = {child.pid}
    for n in range(1, 5):
        _until(lambda n=n: child.restarts >= n, supervisor)
        pids.add(child.pid)
    assert len(pids) == 5  # a new process each time, on the same spec

    exits = [r for r in caplog.records if "uptime_s" in r.__dict__][:4]
    restarts = [r for r in caplog.records if "restarted" in r.getMessage()][:4]
    assert [r.__dict__["delay_s"] for r in exits] == [0.05, 0.1, 0.2, 0.2]
    assert [r.__dict__["restart"] for r in exits] == [1, 2, 3, 4]
    first = exits[0].__dict__
    assert (first["role"], first["port"], first["exit_code"]) == ("worker", 8201, 3)
    assert exits[0].getMessage().startswith(f"worker on port 8201 (pid {first['pid']}) exited")
    assert "exited with code 3" in exits[0].getMessage()
    assert "restart 1 in 0.05 s" in exits[0].getMessage()
    assert [r.__dict__["restart"] for r in restarts] == [1, 2, 3, 4]
    assert {r.__dict__["pid"] for r in restarts} <= pids


def test_a_killed_child_is_logged_with_its_signal_and_the_others_keep_running(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="axon.cli.supervisor")
    sleeper = "import time; time.sleep(60)"
    victim = supervisor.start(_spec(sleeper, port=8200))
    other = supervisor.start(_spec(sleeper, port=8201))
    victim_pid, other_pid = victim.pid, other.pid
    victim.proc.send_signal(signal.SIGKILL)
    _until(lambda: victim.restarts == 1, supervisor)
    assert victim.pid != victim_pid
    assert other.pid == other_pid
    assert other.proc.poll() is None
    exit_record = next(r for r in caplog.records if "signal" in r.__dict__)
    assert exit_record.__dict__["signal"] == "SIGKILL"
    assert exit_record.__dict__["pid"] == victim_pid
    assert "was killed by SIGKILL" in exit_record.getMessage()


def test_a_long_run_resets_the_backoff(supervisor: Supervisor, tmp_path: Path) -> None:
    supervisor.backoff = Backoff(initial_s=0.05, cap_s=10.0, reset_after_s=0.3)
    runs = tmp_path / "runs"
    # Exits at once the first three times, then only after a run longer than reset_after_s.
    code = (
        "import pathlib, sys, time\n"
        f"runs = pathlib.Path({str(runs)!r})\n"
        "n = int(runs.read_text()) + 1 if runs.exists() else 1\n"
        "runs.write_text(str(n))\n"
        "time.sleep(0.5 if n > 3 else 0)\n"
        "sys.exit(1)\n"
    )
    child = supervisor.start(_spec(code))
    _until(lambda: child.restarts == 3, supervisor)
    assert child.delay_s == 0.2  # three quick exits: 0.05, 0.1, 0.2
    _until(lambda: child.restarts == 4, supervisor)
    assert child.delay_s == 0.05


def test_stop_goes_role_by_role_and_kills_what_ignores_sigterm(tmp_path: Path) -> None:
    order_file = tmp_path / "order"
    # Each child notes its role when SIGTERM arrives, then takes a moment to exit: were the
    # roles stopped all at once, the order in the file would be arbitrary.
    polite = (
        "import pathlib, signal, sys, time\n"
        "def bye(*_):\n"
        f"    open({str(order_file)!r}, 'a').write(sys.argv[1] + '\\n')\n"
        "    time.sleep(0.2)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        f"pathlib.Path({str(tmp_path)!r}, sys.argv[1]).touch()\n"
        "time.sleep(60)\n"
    )
    stubborn = (
        "import pathlib, signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"pathlib.Path({str(tmp_path)!r}, 'other').touch()\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(grace_s=1.0, poll_s=0.01)
    children = [
        supervisor.start(ChildSpec(role, port, {}, argv=(sys.executable, "-c", polite, role)))
        for role, port in (("worker", 8200), ("session-manager", 8100), ("gateway", 8000))
    ]
    ignorer = supervisor.start(ChildSpec("other", 9000, {}, argv=(sys.executable, "-c", stubborn)))
    roles = ("worker", "session-manager", "gateway", "other")
    _until(lambda: all((tmp_path / role).exists() for role in roles), supervisor)
    started = time.monotonic()
    supervisor.stop(("gateway", "session-manager", "worker"))
    took = time.monotonic() - started
    assert order_file.read_text().split() == ["gateway", "session-manager", "worker"]
    assert [c.proc.returncode for c in children] == [0, 0, 0]
    # Not in the order: stopped last, and killed once its grace period was over.
    assert ignorer.proc.returncode == -signal.SIGKILL
    assert 1.0 <= took < 10.0


def test_run_returns_on_a_stop_request_and_restarts_nothing_after(
    supervisor: Supervisor,
) -> None:
    child = supervisor.start(_spec("import time; time.sleep(60)"))
    supervisor.request_stop()
    supervisor.run()  # returns at once: a stop was requested
    assert supervisor.stopping
    supervisor.stop()
    assert child.proc.returncode == -signal.SIGTERM
    assert child.restarts == 0
