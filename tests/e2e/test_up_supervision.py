"""``axon up`` supervises its children: a worker killed with SIGKILL comes back on its port
while the other processes keep serving, and SIGTERM to ``axon up`` stops every child.
Real processes on the real services, with the fake engine."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from support.server import SRC
from support.services import cleanup, new_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODEL = "smollm2-135m-instruct"
#: What ``axon up`` prints per child once the stack is ready.
LISTING = re.compile(r"^(gateway|session-manager|worker)\s+http://127\.0\.0\.1:(\d+)\s+pid (\d+)$")
T = TypeVar("T")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _base_port() -> int:
    """A base port whose derived ports (gateway +0, session manager +100, workers +200 and
    +201) are all free."""
    for _ in range(100):
        base = random.randrange(20000, 50000)
        if all(_port_free(base + offset) for offset in (0, 100, 200, 201)):
            return base
    raise RuntimeError("no free base port")


def _alive(pid: int) -> bool:
    """A zombie counts as gone: it runs nothing and holds no port."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Up:
    """One ``axon up`` process, its output (and its children's) in a file."""

    def __init__(self, data_dir: Path, env: dict[str, str], base: int) -> None:
        self.log_path = data_dir / "axon-up.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "axon", "up", "--workers", "2", "--base-port", str(base)],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")])),
                "AXON_DATA_DIR": str(data_dir),
                **env,
            },
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        #: Every child pid seen, restarted ones included: none may outlive ``axon up``.
        self.pids: set[int] = set()

    def lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def supervisor_events(self) -> list[dict[str, Any]]:
        """The supervisor's log lines (JSON, like every axon log line)."""
        events = []
        for line in self.lines():
            if line.startswith("{") and '"axon.cli.supervisor"' in line:
                entry = json.loads(line)
                if entry.get("logger") == "axon.cli.supervisor":
                    events.append(entry)
        return events

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = probe()
            if found is not None:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"axon up exited waiting for {what}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no {what} in {timeout:.0f} s:\n{self.tail()}")

    def children(self) -> dict[int, tuple[str, int]]:
        """pid → (role, port), from the listing ``axon up`` prints once ready."""
        found = {}
        for line in self.lines():
            if m := LISTING.match(line):
                found[int(m[3])] = (m[1], int(m[2]))
        return found

    def ready(self) -> bool:
        return any(line.startswith("axon up: ready") for line in self.lines())

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.lines()[-lines:])


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    ns = new_namespace()
    env = {**ns.env(), "AXON_ENGINE__KIND": "fake"}
    process = Up(tmp_path, env, _base_port())
    try:
        yield process
    finally:
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGTERM)
            try:
                process.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait()
        # Only if the test failed half-way: the children it saw, by their pids.
        for pid in process.pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        cleanup(ns, [MODEL])


def _chat(gateway: str) -> None:
    with httpx.Client(base_url=gateway, timeout=60) as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": False})
        assert r.status_code == 200, r.text


def _jobs_finished(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("axon_jobs_finished_total{")
    )


def test_a_killed_worker_comes_back_and_sigterm_stops_every_child(up: Up) -> None:
    up.wait_for("readiness", lambda: up.ready() or None, 240)
    children = up.children()
    up.pids |= set(children)
    assert sorted(role for role, _ in children.values()) == [
        "gateway",
        "session-manager",
        "worker",
        "worker",
    ]
    gateway = next(f"http://127.0.0.1:{p}" for r, p in children.values() if r == "gateway")
    (victim_port, victim), (survivor_port, _) = sorted(
        (port, pid) for pid, (role, port) in children.items() if role == "worker"
    )
    _chat(gateway)

    os.kill(victim, signal.SIGKILL)
    exited = up.wait_for(
        "exit log line",
        lambda: next((e for e in up.supervisor_events() if e.get("pid") == victim), None),
        30,
    )
    assert exited["role"] == "worker"
    assert exited["port"] == victim_port
    assert exited["signal"] == "SIGKILL"
    assert exited["restart"] == 1
    assert exited["delay_s"] == 0.5
    assert f"worker on port {victim_port} (pid {victim}) was killed by SIGKILL" in exited["event"]

    # While the worker is down (the restart waits 0.5 s, then the process starts): the
    # others still answer, and the surviving worker serves a chat turn.
    before = _jobs_finished(survivor_port)
    _chat(gateway)
    assert _jobs_finished(survivor_port) == before + 1
    for pid, (_, port) in children.items():
        if pid != victim:
            assert _alive(pid)
            assert _ready(port)

    restarted = up.wait_for(
        "restart log line",
        lambda: next(
            (e for e in up.supervisor_events() if "restarted" in e["event"]),
            None,
        ),
        30,
    )
    new_pid = restarted["pid"]
    up.pids.add(new_pid)
    assert (restarted["role"], restarted["port"], restarted["restart"]) == (
        "worker",
        victim_port,
        1,
    )
    assert new_pid != victim
    assert not _alive(victim)
    up.wait_for("restarted worker ready", lambda: True if _ready(victim_port) else None, 120)
    assert _alive(new_pid)
    # Nothing else was restarted.
    assert [e["pid"] for e in up.supervisor_events() if "uptime_s" in e] == [victim]

    up.proc.send_signal(signal.SIGTERM)
    assert up.proc.wait(timeout=120) == 0
    assert [pid for pid in up.pids if _alive(pid)] == []
    stopped = [e["role"] for e in up.supervisor_events() if e["event"].startswith("stopping")]
    assert stopped == ["gateway", "session-manager", "worker", "worker"]
    assert not any(e["event"].startswith("killing") for e in up.supervisor_events())
