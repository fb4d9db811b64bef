"""Several models in one deployment: one queue per model, each worker bound to its model,
``/v1/models`` lists them, an unknown model is a 404."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.server import AxonProcess, run_axon
from support.services import cleanup, new_namespace

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODELS = ["alpha", "beta"]


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[AxonProcess, dict[str, AxonProcess]]]:
    ns = new_namespace()
    data_dir: Path = tmp_path_factory.mktemp("axon-models")
    served = json.dumps([{"kind": "fake", "model": m, "context_window": 1024} for m in MODELS])
    env = {**ns.env(), "AXON_ENGINE__KIND": "fake", "AXON_MODELS": served}
    processes: list[AxonProcess] = []
    try:
        run_axon(["db", "upgrade"], data_dir=data_dir, env=env)
        workers = {}
        for model in MODELS:
            worker = AxonProcess(
                ["worker"], data_dir=data_dir, env={**env, "AXON_ENGINE__MODEL": model}
            )
            processes.append(worker.start())
            workers[model] = worker
        gateway = AxonProcess(["gateway"], data_dir=data_dir, env=env)
        processes.append(gateway.start())
        yield gateway, workers
    finally:
        for process in reversed(processes):
            process.stop()
        cleanup(ns, MODELS)


def _jobs(worker: AxonProcess, model: str) -> float:
    total = 0.0
    for line in httpx.get(f"{worker.url}/metrics").text.splitlines():
        if line.startswith(f'axon_jobs_finished_total{{model="{model}"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_each_model_is_served_by_its_own_workers(
    deployment: tuple[AxonProcess, dict[str, AxonProcess]],
) -> None:
    gateway, workers = deployment
    listed = httpx.get(f"{gateway.url}/v1/models").json()["data"]
    assert sorted(m["id"] for m in listed) == MODELS
    for model in MODELS:
        for _ in range(3):
            r = httpx.post(
                f"{gateway.url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                timeout=60,
            )
            assert r.status_code == 200, r.text
            assert r.json()["model"] == model
    for model, worker in workers.items():
        assert _jobs(worker, model) == 3
        other = next(m for m in MODELS if m != model)
        assert _jobs(worker, other) == 0
    sid = httpx.post(f"{gateway.url}/v1/sessions", json={"model": "beta"}).json()["id"]
    r = httpx.post(
        f"{gateway.url}/v1/sessions/{sid}/messages",
        json={"content": "hello", "stream": False},
        timeout=60,
    )
    assert r.status_code == 200
    assert _jobs(workers["beta"], "beta") == 4


def test_unknown_model_is_a_404(deployment: tuple[AxonProcess, dict[str, AxonProcess]]) -> None:
    gateway, _ = deployment
    r = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "gamma", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
