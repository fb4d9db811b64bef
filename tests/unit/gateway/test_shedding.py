"""Load shedding: past a model's queue depth new requests get 503 + ``Retry-After`` at
once, what was accepted still finishes, and a job that waited too long in the queue ends
with an ``error`` event and a failed reply instead of running late."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from axon.cli.run import embedded_app
from axon.config import EngineSettings, LimitSettings, Settings
from axon.observability import metrics
from axon.worker.engines.fake import FakeEngine
from support.sse import parse

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def _counter(sample: str) -> float:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@asynccontextmanager
async def serve(tmp_path: Path, limits: LimitSettings) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(kind="fake", model="fake-model", capacity=1),
        limits=limits,
    )
    # One slow worker slot: 10 tokens at 20 tokens/s, half a second a reply.
    engine = FakeEngine("fake-model", reply_tokens=10, tokens_per_second=20.0)
    app = await embedded_app(settings, engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", timeout=60
        ) as client:
            yield client


async def test_requests_past_the_queue_depth_are_shed_and_the_rest_finish(
    tmp_path: Path,
) -> None:
    limits = LimitSettings(max_queue_depth=2, max_queue_wait_s=0)
    counted_before = _counter('axon_shed_total{reason="queue_depth"}')
    async with serve(tmp_path, limits) as client:
        answers = []
        for _ in range(6):
            answers.append(asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)))
            await asyncio.sleep(0.05)  # the depth a request sees is what came before it
        done = await asyncio.gather(*answers)
    codes = [r.status_code for r in done]
    shed = [r for r in done if r.status_code == 503]
    assert shed, codes
    assert codes.count(200) + len(shed) == 6
    for r in shed:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    # Everything accepted was answered in full, and every shed request was counted.
    assert _counter('axon_shed_total{reason="queue_depth"}') == counted_before + len(shed)
    assert all(r.json()["choices"][0]["finish_reason"] == "stop" for r in done if r.is_success)


async def test_a_job_that_waited_too_long_ends_as_a_failed_reply(tmp_path: Path) -> None:
    limits = LimitSettings(max_queue_depth=0, max_queue_wait_s=0.3)
    async with serve(tmp_path, limits) as client:
        sid = (await client.post("/v1/sessions", json={})).json()["id"]
        other = (await client.post("/v1/sessions", json={})).json()["id"]
        first = asyncio.create_task(
            client.post(f"/v1/sessions/{sid}/messages", json={"content": "first"})
        )
        await asyncio.sleep(0.05)
        late = await client.post(f"/v1/sessions/{other}/messages", json={"content": "late"})
        await first
        events = parse(late.text)
        assert events[-1].event == "error"
        assert events[-1].data["error"]["code"] == "overloaded"
        stored = (await client.get(f"/v1/sessions/{other}")).json()["messages"]
        assert [(m["role"], m["status"]) for m in stored] == [
            ("user", "complete"),
            ("assistant", "failed"),
        ]
        assert stored[1]["error_code"] == "overloaded"
