"""An ``Idempotency-Key`` retry returns the same turn at once; the same key reused with a
different request is refused with a 422 instead of silently answering the first."""

from __future__ import annotations

import httpx


async def test_a_retry_with_the_same_key_returns_the_same_turn(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    send = {"content": "hello", "stream": False}
    key = {"Idempotency-Key": "k-1"}

    first = await client.post(f"/v1/sessions/{sid}/messages", json=send, headers=key)
    again = await client.post(f"/v1/sessions/{sid}/messages", json=send, headers=key)

    assert first.status_code == again.status_code == 200
    assert again.json()["message"]["id"] == first.json()["message"]["id"]
    assert again.json()["user_message"]["id"] == first.json()["user_message"]["id"]
    messages = (await client.get(f"/v1/sessions/{sid}")).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_the_same_key_with_another_request_is_a_422(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    key = {"Idempotency-Key": "k-2"}
    url = f"/v1/sessions/{sid}/messages"
    assert (await client.post(url, json={"content": "a", "stream": False}, headers=key)).is_success

    for other in ({"content": "b"}, {"content": "a", "max_tokens": 3}):
        r = await client.post(url, json={**other, "stream": False}, headers=key)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "idempotency_key_reused"
    messages = (await client.get(f"/v1/sessions/{sid}")).json()["messages"]
    assert [m["content"] for m in messages if m["role"] == "user"] == ["a"]
