"""The distributed stack as separate processes (2 gateways, 2 session managers, 2 workers)
on real PostgreSQL, Redis and RabbitMQ, with the real model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import openai
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from support.services import cleanup, new_namespace
from support.sse import parse, read_then_reattach
from support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODEL = "smollm2-135m-instruct"
CONVERSATIONS = 20
TURNS = 3


ENV = {
    "AXON_ENGINE__THREADS": "1",
    "AXON_ENGINE__CAPACITY": "4",
    "AXON_ENGINE__CONTEXT_WINDOW": "2048",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ns = new_namespace()
    s = Stack(ns, tmp_path_factory.mktemp("axon-dist"), ENV)
    try:
        yield s
    finally:
        s.stop()
        cleanup(ns, [MODEL])


async def _conversation(http: list[httpx.AsyncClient], index: int) -> str:
    sid: str = (await http[index % 2].post("/v1/sessions", json={"title": f"c{index}"})).json()[
        "id"
    ]
    for turn in range(TURNS):
        # Every turn goes through the other gateway, so any replica serves any session.
        client = http[(index + turn) % 2]
        body = {"content": f"Conversation {index}, turn {turn}: say hi.", "max_tokens": 12}
        if turn % 2:
            r = await client.post(f"/v1/sessions/{sid}/messages", json={**body, "stream": False})
            assert r.status_code == 200, r.text
        else:
            r = await client.post(f"/v1/sessions/{sid}/messages", json=body)
            events = parse(r.text)
            assert events[-1].event == "done", r.text[-500:]
    return sid


async def _openai_conversation(base_url: str, index: int) -> int:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    messages: list[dict[str, str]] = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": f"Stateless {index}.{turn}: hello"})
        if turn % 2:
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=12,
                stream=True,  # type: ignore[arg-type]
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        else:
            reply = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=12,  # type: ignore[arg-type]
            )
            text = reply.choices[0].message.content or ""
        assert text
        messages.append({"role": "assistant", "content": text})
    await client.close()
    return len(messages)


async def _drive(stack: Stack) -> list[str]:
    timeout = httpx.Timeout(300.0)
    async with (
        httpx.AsyncClient(base_url=stack.gateways[0].url, timeout=timeout) as g1,
        httpx.AsyncClient(base_url=stack.gateways[1].url, timeout=timeout) as g2,
    ):
        sessions = [_conversation([g1, g2], i) for i in range(CONVERSATIONS)]
        stateless = [_openai_conversation(stack.gateways[i % 2].url, i) for i in range(4)]
        results = await asyncio.gather(*sessions, *stateless)
    assert results[CONVERSATIONS:] == [2 * TURNS] * 4
    return [str(r) for r in results[:CONVERSATIONS]]


async def _stored(url: str, session_ids: list[str]) -> dict[str, list[tuple[str, str, str]]]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                sa.text(
                    "SELECT session_id, role, status, id, reply_id FROM axon_messages "
                    "WHERE session_id = ANY(:ids) ORDER BY pos"
                ),
                {"ids": session_ids},
            )
        ).all()
    await engine.dispose()
    out: dict[str, list[tuple[str, str, str]]] = {sid: [] for sid in session_ids}
    for session_id, role, status, message_id, reply_id in rows:
        out[session_id].append((role, status, message_id if role == "assistant" else reply_id))
    return out


def test_concurrent_conversations_store_every_turn_exactly_once(stack: Stack) -> None:
    session_ids = asyncio.run(_drive(stack))
    stored = asyncio.run(_stored(stack.ns.database_url, session_ids))
    for sid, messages in stored.items():
        roles = [m[0] for m in messages]
        assert roles == ["user", "assistant"] * TURNS, (sid, messages)
        assert all(status == "complete" for _, status, _ in messages)
        # Each user message names its reply, and that reply is the assistant row after it.
        for user, assistant in zip(messages[::2], messages[1::2], strict=True):
            assert user[2] == assistant[2]


def test_reply_started_on_one_gateway_resumes_on_the_other(stack: Stack) -> None:
    g1, g2 = stack.gateways
    with httpx.Client(timeout=120) as http:
        sid = http.post(f"{g1.url}/v1/sessions", json={}).json()["id"]
        body = {"content": "Tell me a story about a fox.", "max_tokens": 64}
        tokens, rest = read_then_reattach(
            http, f"{g1.url}/v1/sessions/{sid}/messages", g2.url, body
        )
    assert rest[-1].event == "done"
    joined = "".join(e.data["text"] for e in tokens + rest if e.event == "token")
    assert joined == rest[-1].data["message"]["content"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/chat/completions", b"{oops", 400),
        ("POST", "/v1/chat/completions", b'{"messages": []}', 400),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role": "x", "content": "a"}]}', 400),
        ("POST", "/v1/chat/completions", b'{"messages": [{"role":"user","content":"\xff"}]}', 400),
        (
            "POST",
            "/v1/chat/completions",
            b'{"messages": [{"role":"user","content":"a"}], "max_tokens": 99999}',
            400,
        ),
        ("POST", "/v1/sessions/sess_missing/messages", b'{"content": "a"}', 404),
        ("GET", "/v1/sessions/sess_missing", b"", 404),
    ],
)
def test_bad_input_through_the_gateway(
    stack: Stack, method: str, path: str, body: bytes, status: int
) -> None:
    r = httpx.request(
        method,
        f"{stack.gateways[0].url}{path}",
        content=body or None,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]
    assert "Traceback" not in r.text
