"""The session API over the embedded app."""

from __future__ import annotations

import asyncio

import httpx

from axon.gateway.services import Services
from axon.worker.engines.fake import FakeEngine
from support.cancel import cancel_when_running
from support.sse import parse


async def new_session(client: httpx.AsyncClient, **fields: str) -> str:
    r = await client.post("/v1/sessions", json=fields)
    assert r.status_code == 201
    session_id: str = r.json()["id"]
    return session_id


async def say(client: httpx.AsyncClient, session_id: str, text: str, **extra: object) -> dict:
    r = await client.post(
        f"/v1/sessions/{session_id}/messages", json={"content": text, "stream": False, **extra}
    )
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


async def test_session_crud_and_pagination(client: httpx.AsyncClient) -> None:
    ids = [await new_session(client, title=f"chat {i}") for i in range(5)]
    page1 = (await client.get("/v1/sessions", params={"limit": 3})).json()
    assert [s["id"] for s in page1["data"]] == ids[::-1][:3]
    assert page1["has_more"] is True
    page2 = (
        await client.get("/v1/sessions", params={"limit": 3, "after": page1["next_cursor"]})
    ).json()
    assert [s["id"] for s in page2["data"]] == ids[::-1][3:]
    assert page2["has_more"] is False
    assert page2["next_cursor"] is None
    r = await client.delete(f"/v1/sessions/{ids[0]}")
    assert r.json() == {"id": ids[0], "object": "session.deleted", "deleted": True}
    assert (await client.get(f"/v1/sessions/{ids[0]}")).status_code == 404
    assert (await client.delete(f"/v1/sessions/{ids[0]}")).status_code == 404


async def test_streamed_turn_is_stored_once(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": "hello"})
    events = parse(r.text)
    assert events[0].event == "turn"
    reply_id = events[0].data["reply_id"]
    tokens = [e for e in events if e.event == "token"]
    assert len(tokens) >= 2
    assert all(e.id for e in tokens)
    done = events[-1]
    assert done.event == "done"
    text = "".join(e.data["text"] for e in tokens)
    assert done.data["message"]["content"] == text
    assert done.data["message"]["id"] == reply_id
    session = (await client.get(f"/v1/sessions/{sid}")).json()
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "hello"),
        ("assistant", text),
    ]


async def test_second_turn_prompt_contains_the_first(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    sid = await new_session(client, system_prompt="Be brief.")
    first = await say(client, sid, "my name is Ada")
    await say(client, sid, "what is my name?")
    prompt = engine.prompts[-1]
    assert [(m.role, m.content) for m in prompt] == [
        ("system", "Be brief."),
        ("user", "my name is Ada"),
        ("assistant", first["message"]["content"]),
        ("user", "what is my name?"),
    ]


async def test_old_turns_are_dropped_to_fit(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    sid = await new_session(client, system_prompt="sys")
    for i in range(6):
        await say(client, sid, f"turn {i} " + "pad " * 100, max_tokens=8)
    prompt = engine.prompts[-1]
    assert prompt[0].content == "sys"
    assert prompt[-1].content.startswith("turn 5")
    assert prompt[1].role == "user"
    assert not any(m.content.startswith("turn 0") for m in prompt)


async def test_message_too_long_is_a_400_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post(
        f"/v1/sessions/{sid}/messages", json={"content": "word " * 3000, "stream": False}
    )
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "context window" in r.json()["error"]["message"]
    assert (await client.get(f"/v1/sessions/{sid}")).json()["messages"] == []


async def test_bad_session_input(client: httpx.AsyncClient) -> None:
    sid = await new_session(client)
    r = await client.post("/v1/sessions/sess_nope/messages", json={"content": "x"})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "session_id"
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": ""})
    assert r.status_code == 400
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"text": "x"})
    assert r.status_code == 400
    r = await client.post("/v1/sessions", json={"model": "nope"})
    assert r.status_code == 404
    r = await client.get(f"/v1/sessions/{sid}/messages/msg_nope/stream")
    assert r.status_code == 404
    assert (await client.get(f"/v1/sessions/{sid}")).json()["messages"] == []


async def test_reattach_with_last_event_id_has_no_gap_and_no_repeat(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.tokens_per_second = 200
    sid = await new_session(client)
    async with client.stream(
        "POST", f"/v1/sessions/{sid}/messages", json={"content": "resume me"}
    ) as r:
        seen = ""
        async for chunk in r.aiter_text():
            seen += chunk
            if seen.count("event: token") >= 2 and seen.endswith("\n\n"):
                break
    first_part = parse(seen)
    reply_id = first_part[0].data["reply_id"]
    tokens = [e for e in first_part if e.event == "token"]
    r = await client.get(
        f"/v1/sessions/{sid}/messages/{reply_id}/stream",
        headers={"Last-Event-ID": tokens[-1].id or ""},
    )
    rest = parse(r.text)
    assert rest[-1].event == "done"
    text = "".join(e.data["text"] for e in tokens + rest if e.event == "token")
    assert text == rest[-1].data["message"]["content"]
    # A replay from the start gives the same reply.
    full = parse((await client.get(f"/v1/sessions/{sid}/messages/{reply_id}/stream")).text)
    assert "".join(e.data["text"] for e in full if e.event == "token") == text


async def test_cancel_stops_the_reply(client: httpx.AsyncClient, engine: FakeEngine) -> None:
    engine.tokens_per_second = 50
    engine.reply_tokens = 500
    sid = await new_session(client)

    canceller = asyncio.create_task(cancel_when_running(client, sid))
    turn = await say(client, sid, "go on forever", max_tokens=400)
    await canceller
    assert turn["finish_reason"] == "cancelled"
    assert turn["message"]["status"] == "cancelled"
    assert turn["usage"]["completion_tokens"] < 400


async def test_idempotency_key_returns_the_same_turn(
    client: httpx.AsyncClient, services: Services, engine: FakeEngine
) -> None:
    sid = await new_session(client)
    headers = {"Idempotency-Key": "turn-1"}
    body = {"content": "only once", "stream": False}
    a = await client.post(f"/v1/sessions/{sid}/messages", json=body, headers=headers)
    b = await client.post(f"/v1/sessions/{sid}/messages", json=body, headers=headers)
    assert a.status_code == b.status_code == 200
    assert a.json()["user_message"]["id"] == b.json()["user_message"]["id"]
    assert a.json()["message"]["id"] == b.json()["message"]["id"]
    assert len(engine.prompts) == 1
    messages = (await client.get(f"/v1/sessions/{sid}")).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
