"""Chat requests beyond the per-minute limit get a 429 with Retry-After."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from axon.cli.run import embedded_app
from axon.config import EngineSettings, LimitSettings, Settings
from axon.worker.engines.fake import FakeEngine


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(kind="fake", model="fake-model"),
        limits=LimitSettings(requests_per_minute=2),
    )
    app = await embedded_app(settings, FakeEngine("fake-model", reply_tokens=3))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            yield client


async def test_third_chat_request_in_a_minute_is_refused(limited: httpx.AsyncClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert (await limited.post("/v1/chat/completions", json=body)).status_code == 200
    assert (await limited.post("/v1/chat/completions", json=body)).status_code == 200
    refused = await limited.post("/v1/chat/completions", json=body)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert 0 < int(refused.headers["retry-after"]) <= 60
    # Reading is not limited.
    assert (await limited.get("/v1/models")).status_code == 200
