"""Bad or oversized input gets a clear 400 or 413 that names the limit, on both chat APIs,
and never a 500 or a frozen server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from axon.cli.run import embedded_app
from axon.config import EngineSettings, LimitSettings, ServerSettings, Settings
from axon.worker.engines.fake import FakeEngine


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(kind="fake", model="fake-model", context_window=512),
        limits=LimitSettings(max_messages=50, max_message_chars=1000, max_prompt_tokens=300),
        server=ServerSettings(max_body_bytes=64_000),
    )
    app: FastAPI = await embedded_app(settings, FakeEngine("fake-model", context_window=512))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            yield c


def chat(messages: list[dict[str, str]], **extra: object) -> dict[str, object]:
    return {"messages": messages, **extra}


async def test_too_many_messages_is_a_400_that_names_the_limit(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/chat/completions", json=chat([{"role": "user", "content": ""}] * 51))
    assert r.status_code == 400
    assert "at most 50" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages"


async def test_a_long_message_is_a_413_on_both_apis(client: httpx.AsyncClient) -> None:
    long = "x" * 1001
    r = await client.post("/v1/chat/completions", json=chat([{"role": "user", "content": long}]))
    assert r.status_code == 413
    assert "at most 1000" in r.json()["error"]["message"]
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": long})
    assert r.status_code == 413


async def test_too_many_prompt_tokens_and_max_tokens_beyond_the_window_are_400s(
    client: httpx.AsyncClient,
) -> None:
    words = " ".join(["word"] * 200)
    r = await client.post(
        "/v1/chat/completions", json=chat([{"role": "user", "content": words[:400]}] * 3)
    )
    assert r.status_code == 400
    assert "at most 300 prompt tokens" in r.json()["error"]["message"]
    r = await client.post(
        "/v1/chat/completions", json=chat([{"role": "user", "content": "hi"}], max_tokens=512)
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff ok"])
async def test_a_lone_surrogate_is_a_400_on_both_apis(client: httpx.AsyncClient, text: str) -> None:
    # json.dumps writes the surrogate as an escape, as a hostile client would.
    body = json.dumps(chat([{"role": "user", "content": text}]))
    r = await client.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    assert "surrogate" in r.json()["error"]["message"]
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(
        f"/v1/sessions/{sid}/messages",
        content=json.dumps({"content": text}),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400, r.text


async def test_a_body_over_the_limit_is_a_413_with_or_without_a_length(
    client: httpx.AsyncClient,
) -> None:
    big = json.dumps(chat([{"role": "user", "content": "x" * 70_000}]))
    r = await client.post(
        "/v1/chat/completions", content=big, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 10_000

    r = await client.post(
        "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


async def test_a_last_event_id_from_the_future_or_malformed_is_a_400(
    client: httpx.AsyncClient,
) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    turn = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": False}
    )
    reply = turn.json()["message"]["id"]
    for position in ("99999999999999-0", "not-an-id", "-5-1"):
        r = await client.get(
            f"/v1/sessions/{sid}/messages/{reply}/stream", headers={"Last-Event-ID": position}
        )
        assert r.status_code == 400, (position, r.text)
        assert "last-event-id" in r.json()["error"]["param"].lower()
