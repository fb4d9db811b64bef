"""A job that always fails is dead-lettered after the delivery limit, and the client gets
an error event instead of waiting forever. Runs the real processes (gateway, session
manager, worker) on the real services, with the fake engine told to fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.server import AxonProcess, run_axon
from support.services import cleanup, new_namespace
from support.sse import parse

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MARKER = "always-fail-this"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AxonProcess, AxonProcess]]:
    ns = new_namespace()
    data_dir: Path = tmp_path_factory.mktemp("axon-poison")
    env = {
        **ns.env(),
        "AXON_ENGINE__KIND": "fake",
        "AXON_ENGINE__FAKE_FAIL_MARKER": MARKER,
        "AXON_QUEUE__DELIVERY_LIMIT": "3",
    }
    processes: list[AxonProcess] = []
    try:
        run_axon(["db", "upgrade"], data_dir=data_dir, env=env)
        manager = AxonProcess(["session-manager"], data_dir=data_dir, env=env)
        processes.append(manager.start())
        worker = AxonProcess(["worker"], data_dir=data_dir, env=env)
        processes.append(worker.start())
        gateway = AxonProcess(
            ["gateway"],
            data_dir=data_dir,
            env={**env, "AXON_GATEWAY__UPSTREAMS": f'["{manager.url}"]'},
        )
        processes.append(gateway.start())
        yield gateway, worker
    finally:
        for process in reversed(processes):
            process.stop()
        cleanup(ns, ["smollm2-135m-instruct"])


def test_poison_job_ends_with_an_error_event(stack: tuple[AxonProcess, AxonProcess]) -> None:
    gateway, worker = stack
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": f"please {MARKER}"})
        events = parse(r.text)
        assert events[-1].event == "error", r.text[-400:]
        assert events[-1].data["error"]["code"] == "job_failed"
        assert "3 times" in events[-1].data["error"]["message"]
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "complete"),
            ("assistant", "failed"),
        ]
        # The worker still serves other requests.
        ok = http.post(f"/v1/sessions/{sid}/messages", json={"content": "fine", "stream": False})
        assert ok.status_code == 200
    counts = {
        line.split('outcome="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in httpx.get(f"{worker.url}/metrics").text.splitlines()
        if line.startswith("axon_jobs_finished_total{")
    }
    assert counts["dead"] == 1
    # Every delivery but the dead-lettered one was handed back for another try.
    assert counts["retried"] >= 2
