"""The forwarding gateway: past its limit of requests in flight to the session managers it
refuses at once (503 + Retry-After) instead of queueing, and recovers as soon as they end."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from axon.auth.authenticator import Authenticator
from axon.config import GatewaySettings, Settings
from axon.gateway.app import create_gateway_app
from axon.gateway.proxy import Upstreams
from axon.ratelimit.memory import MemoryRateLimiter


def _upstream() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def slow() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(5):
                yield b"data: {}\n\n"
                await asyncio.sleep(0.2)

        return StreamingResponse(body(), media_type="text/event-stream")

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    return app


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_upstream(), port=port, log_config=None))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers no event for "listening"
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def test_past_its_limit_the_gateway_refuses_at_once_then_recovers(upstream: str) -> None:
    settings = Settings(gateway=GatewaySettings(upstreams=[upstream], upstream_pool_size=2))
    upstreams = Upstreams(settings.gateway)
    app = create_gateway_app(
        settings, upstreams, Authenticator(settings.auth, None), MemoryRateLimiter(), None
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        held = [asyncio.create_task(client.post("/v1/chat/completions", json={})) for _ in range(2)]
        await asyncio.sleep(0.3)  # both are streaming through the gateway now
        refused = await client.post("/v1/chat/completions", json={})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        # Probes have their own connections: the gateway still answers ready.
        assert (await client.get("/readyz")).status_code == 200
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        again = await client.post("/v1/chat/completions", json={})
        assert again.status_code == 200
        assert again.text.count("data:") == 5
    await upstreams.close()
