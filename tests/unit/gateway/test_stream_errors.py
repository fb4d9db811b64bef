"""A backend that fails after a stream began ends the stream with an SSE ``error`` event
(never a silently cut connection), on both streaming APIs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.cli.run import embedded_app
from axon.config import EngineSettings, Settings
from axon.core.errors import Unavailable
from axon.streaming.memory import MemoryTokenStreams
from axon.worker.engines.fake import FakeEngine
from support.sse import parse


@pytest.fixture
async def client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path, engine=EngineSettings(kind="fake", model="fake-model"))
    engine = FakeEngine("fake-model", reply_tokens=40, tokens_per_second=100.0)
    app = await embedded_app(settings, engine)
    read = MemoryTokenStreams.read
    reads: dict[str, int] = {}

    async def failing(self: MemoryTokenStreams, request_id: str, *args: Any, **kw: Any) -> Any:
        # The third read of a reply's stream finds the stream bus gone.
        reads[request_id] = reads.get(request_id, 0) + 1
        if reads[request_id] >= 3:
            raise Unavailable("Redis is unavailable")
        return await read(self, request_id, *args, **kw)

    monkeypatch.setattr(MemoryTokenStreams, "read", failing)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


async def test_a_session_stream_ends_with_an_error_event(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    assert r.status_code == 200
    events = parse(r.text)
    assert events[0].event == "turn"
    assert any(e.event == "token" for e in events)
    assert events[-1].event == "error"
    assert events[-1].data["error"]["code"] == "service_unavailable"


async def test_an_openai_stream_ends_with_an_error_chunk(client: httpx.AsyncClient) -> None:
    body = {"stream": True, "messages": [{"role": "user", "content": "hello"}]}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200
    data = [e.data for e in parse(r.text)]
    assert any(isinstance(d, dict) and d.get("choices") for d in data)
    assert data[-1]["error"]["code"] == "service_unavailable"
