"""While the session store is down, a client can still re-attach to a reply whose stream is
in Redis: the stream is named by the caller's tenant, so nothing else becomes reachable."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from axon.core.errors import StoreUnavailable
from axon.gateway.services import Services
from support.sse import parse


def down(*_: Any, **__: Any) -> Any:
    raise StoreUnavailable("the session store is unavailable: OperationalError")


async def test_reattach_is_served_from_the_stream_while_the_store_is_down(
    client: httpx.AsyncClient, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": True})
    events = parse(r.text)
    reply_id = events[0].data["reply_id"]
    text = "".join(e.data["text"] for e in events if e.event == "token")
    first_id = next(e.id for e in events if e.event == "token")

    store = services.manager._store
    for name in ("find_turn", "get_message", "get_session", "add_assistant_message"):
        monkeypatch.setattr(store, name, down)
    r = await client.get(
        f"/v1/sessions/{sid}/messages/{reply_id}/stream", headers={"Last-Event-ID": first_id}
    )
    assert r.status_code == 200
    rest = parse(r.text)
    assert rest[-1].event == "done"
    first = next(e.data["text"] for e in events if e.event == "token")
    assert first + "".join(e.data["text"] for e in rest if e.event == "token") == text

    # A reply the stream no longer holds needs the store: a clear 503, not a 500.
    r = await client.get(f"/v1/sessions/{sid}/messages/msg_unknown/stream")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "store_unavailable"
