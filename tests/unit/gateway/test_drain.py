"""Draining on shutdown: readiness goes false at once, and an open stream ends with an
``error`` event that asks the client to re-attach, after which it gets exactly the rest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from axon.gateway.drain import Drain
from axon.gateway.proxy import proxied_events
from axon.worker.engines.fake import FakeEngine
from support.sse import parse
from support.worker import eventually


@pytest.fixture
def engine() -> FakeEngine:
    # Slow enough that the reply is still running when the drain starts.
    return FakeEngine(
        "fake-model",
        context_window=512,
        reply_tokens=40,
        tokens_per_second=40,
        default_max_tokens=64,
    )


async def test_readiness_fails_at_once_when_draining(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    app.state.drain.start()
    r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["serving"] == "failing: shutting down"


async def test_a_draining_server_asks_open_streams_to_reattach(
    client: httpx.AsyncClient, app: FastAPI, engine: FakeEngine
) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]

    async def drain_mid_reply() -> None:
        await eventually(lambda: engine.steps >= 3)
        app.state.drain.start()

    draining = asyncio.create_task(drain_mid_reply())
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True})
    await draining
    events = parse(r.text)
    last = events[-1]
    assert last.event == "error"
    assert last.data["reattach"] is True
    assert last.data["error"]["code"] == "shutting_down"
    assert all(e.event in ("turn", "token") for e in events[:-1])
    seen = "".join(e.data["text"] for e in events if e.event == "token")
    last_id = [e.id for e in events if e.event == "token"][-1]
    reply_id = events[0].data["reply_id"]

    # Another replica (here: the same app, drained no more) serves the rest.
    app.state.drain = Drain()
    r = await client.get(
        f"/v1/sessions/{sid}/messages/{reply_id}/stream", headers={"Last-Event-ID": last_id}
    )
    rest = parse(r.text)
    assert rest[-1].event == "done"
    text = seen + "".join(e.data["text"] for e in rest if e.event == "token")
    assert text == rest[-1].data["message"]["content"]


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_draining_gateway_ends_proxied_streams_between_events() -> None:
    drain = Drain()
    drain.start()
    # The first chunk ends mid-event: the stream goes on to the event's end, then stops.
    out = [
        chunk
        async for chunk in proxied_events(
            chunks(b'event: token\nid: 1-0\ndata: {"te', b'xt":"a"}\n\n', b"never sent"), drain
        )
    ]
    assert out[:2] == [b'event: token\nid: 1-0\ndata: {"te', b'xt":"a"}\n\n']
    [error] = parse(out[2].decode())
    assert error.event == "error"
    assert error.data["reattach"] is True
    assert len(out) == 3
