"""Limits through the HTTP API (embedded app, fake engine): per address for anonymous use,
per key and per tenant for requests, tokens (reserved, then settled with the real usage) and
open streams, and a clear policy when the limiter's backend is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from axon.cli.run import embedded_app
from axon.config import AuthSettings, BackendSettings, EngineSettings, LimitSettings, Settings
from axon.worker.engines.fake import FakeEngine

ADMIN = "admin-secret-for-tests"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


@asynccontextmanager
async def serve(
    tmp_path: Path, *, speed: float = 0.0, reply_tokens: int = 12, **fields: Any
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(kind="fake", model="fake-model", context_window=4096),
        **fields,
    )
    engine = FakeEngine(
        "fake-model", context_window=4096, reply_tokens=reply_tokens, tokens_per_second=speed
    )
    app = await embedded_app(settings, engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


async def key(client: httpx.AsyncClient, tenant: str, **limits: int) -> dict[str, str]:
    r = await client.post(
        "/admin/v1/keys",
        json={"tenant": tenant, **limits},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def auth(**fields: Any) -> AuthSettings:
    return AuthSettings(required=True, admin_key=ADMIN, **fields)


async def test_anonymous_callers_are_limited_per_address(tmp_path: Path) -> None:
    async with serve(tmp_path, limits=LimitSettings(requests_per_minute=2)) as client:
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        # A forged X-Forwarded-For does not pick a fresh counter: no proxy is trusted.
        refused = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": "198.51.100.1"}
        )
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # Reading is not limited.
        assert (await client.get("/v1/models")).status_code == 200


async def test_forwarded_addresses_count_only_from_trusted_proxies(tmp_path: Path) -> None:
    limits = LimitSettings(requests_per_minute=1, trusted_proxies=["203.0.113.0/24"])
    async with serve(tmp_path, limits=limits) as client:
        for address in ("198.51.100.1", "198.51.100.2"):
            headers = {"X-Forwarded-For": f"10.9.9.9, {address}"}
            ok = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert ok.status_code == 200
        # The left part of the header is the client's own word; the nearest hop counts.
        again = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.1"}
        )
        assert again.status_code == 429


async def test_a_keys_request_limit_answers_429_with_openai_headers(tmp_path: Path) -> None:
    async with serve(tmp_path, auth=auth()) as client:
        headers = await key(client, "acme", requests_per_minute=2)
        first = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert "x-ratelimit-remaining-tokens" in first.headers
        await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert refused.status_code == 429
        assert "2 requests per minute" in refused.json()["error"]["message"]
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(refused.headers["retry-after"]) >= 1
        # Another key of the same tenant has its own budget.
        other = await key(client, "acme", requests_per_minute=2)
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=other)).is_success


async def test_tokens_are_reserved_then_settled_to_the_real_usage(tmp_path: Path) -> None:
    async with serve(tmp_path, auth=auth()) as client:
        headers = await key(client, "acme", tokens_per_minute=300)
        big = {**CHAT, "max_tokens": 200}
        # Each request reserves prompt + 200 tokens, and uses far fewer (12-token replies):
        # without settlement the second would not fit.
        for _ in range(3):
            r = await client.post("/v1/chat/completions", json=big, headers=headers)
            assert r.status_code == 200, r.text
        remaining = int(r.headers["x-ratelimit-remaining-tokens"])
        used = r.json()["usage"]["total_tokens"]
        assert remaining < 300 - 200
        too_big = await client.post(
            "/v1/chat/completions", json={**CHAT, "max_tokens": 400}, headers=headers
        )
        assert too_big.status_code == 429
        assert "tokens per minute" in too_big.json()["error"]["message"]
        assert used > 0


async def test_a_client_that_leaves_is_charged_what_its_reply_used(tmp_path: Path) -> None:
    async with serve(tmp_path, speed=40.0, auth=auth()) as client:
        headers = await key(client, "acme", tokens_per_minute=260)
        request = client.post(
            "/v1/chat/completions",
            json={**CHAT, "max_tokens": 200, "stream": True},
            headers=headers,
        )
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(request, 0.1)  # the client gives up mid-reply
        # The abandoned reply is cancelled and its tokens settled: the budget comes back.
        for _ in range(50):
            r = await client.post(
                "/v1/chat/completions", json={**CHAT, "max_tokens": 200}, headers=headers
            )
            if r.status_code == 200:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 200, r.text


async def test_open_streams_are_capped_per_tenant(tmp_path: Path) -> None:
    limits = LimitSettings(tenant_max_streams=1)
    async with serve(tmp_path, speed=20.0, auth=auth(), limits=limits) as client:
        a, a2 = await key(client, "a"), await key(client, "a")
        b = await key(client, "b")
        running = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT, headers=a))
        await asyncio.sleep(0.2)
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=a2)
        assert refused.status_code == 429
        assert "open streams" in refused.json()["error"]["message"]
        # Another tenant is not affected.
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=b)).is_success
        assert (await running).status_code == 200
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=a2)).is_success


@pytest.mark.parametrize(("policy", "status"), [("closed", 503), ("open", 200)])
async def test_a_limiter_that_cannot_be_reached_applies_the_configured_policy(
    tmp_path: Path, policy: str, status: int
) -> None:
    backends = BackendSettings(ratelimit="redis", redis_url="redis://127.0.0.1:1/0")
    limits = LimitSettings(requests_per_minute=5, on_backend_failure=policy)  # type: ignore[arg-type]
    async with serve(tmp_path, backends=backends, limits=limits) as client:
        r = await client.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == status, r.text
        if status == 503:
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "service_unavailable"


async def test_a_keys_own_stream_cap_applies_to_that_key_alone(tmp_path: Path) -> None:
    async with serve(tmp_path, speed=20.0, auth=auth()) as client:
        capped = await key(client, "acme", max_streams=1)
        other = await key(client, "acme")
        running = asyncio.create_task(
            client.post("/v1/chat/completions", json=CHAT, headers=capped)
        )
        await asyncio.sleep(0.2)
        refused = await client.post("/v1/chat/completions", json=CHAT, headers=capped)
        assert refused.status_code == 429
        assert "at most 1 at once" in refused.json()["error"]["message"]
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=other)).is_success
        assert (await running).status_code == 200


def _counter(metrics_text: str, sample: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_refusal_is_counted_and_logged_with_its_tenant_never_the_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample = 'axon_rate_limited_total{limit="key_requests"}'
    async with serve(tmp_path, auth=auth()) as client:
        headers = await key(client, "acme", requests_per_minute=1)
        before = _counter((await client.get("/metrics")).text, sample)
        await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        with caplog.at_level("INFO"):
            refused = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert refused.status_code == 429
        assert _counter((await client.get("/metrics")).text, sample) == before + 1
    lines = [r for r in caplog.records if r.getMessage() == "request refused"]
    assert [(r.reason, r.tenant) for r in lines] == [("rate_limit_exceeded", "acme")]  # type: ignore[attr-defined]
    secret = headers["Authorization"].split()[1]
    assert all(secret not in r.getMessage() + str(r.__dict__) for r in caplog.records)
