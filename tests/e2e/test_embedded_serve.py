"""``axon serve`` as a real process with the real model, driven by the official ``openai``
client and over the session API."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from axon.core.types import ChatMessage
from axon.models.gguf import GgufTokenizer, default_model_path
from support.server import AxonProcess
from support.sse import read_then_reattach

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tokenizer() -> GgufTokenizer:
    return GgufTokenizer(default_model_path())


def client(server: AxonProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_openai_client_non_streaming(server: AxonProcess) -> None:
    models = client(server).models.list()
    model = models.data[0].id
    reply = client(server).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=16,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert 0 < reply.usage.completion_tokens <= 16  # type: ignore[union-attr]


def test_openai_client_streaming(server: AxonProcess) -> None:
    stream = client(server).chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = []
    usage = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(pieces) >= 2
    assert usage is not None
    assert usage.completion_tokens > 0


def test_openai_client_sees_errors(server: AxonProcess) -> None:
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError) as info:
        client(server).chat.completions.create(
            model="smollm2-135m-instruct",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=100_000,
        )
    assert "context window" in str(info.value)


def _turn(http: httpx.Client, sid: str, text: str) -> dict:
    r = http.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": text, "stream": False, "temperature": 0, "max_tokens": 24},
    )
    assert r.status_code == 200, r.text
    body: dict = r.json()
    return body


def test_two_turns_restart_and_history(server: AxonProcess, tokenizer: GgufTokenizer) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        sid = http.post("/v1/sessions", json={"title": "e2e"}).json()["id"]
        first = _turn(http, sid, "My favourite fruit is mango.")
        second = _turn(http, sid, "Which fruit do I like?")
        history = [
            ChatMessage(role="user", content="My favourite fruit is mango."),
            ChatMessage(role="assistant", content=first["message"]["content"]),
            ChatMessage(role="user", content="Which fruit do I like?"),
        ]
        # The engine reports the prompt it was given; it must be the whole conversation.
        assert second["usage"]["prompt_tokens"] == tokenizer.count_prompt(history)
        stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert [(m["role"], m["content"]) for m in stored] == [
            (m.role, m.content) for m in history
        ] + [("assistant", second["message"]["content"])]

    server.restart()

    with httpx.Client(base_url=server.url, timeout=120) as http:
        after = http.get(f"/v1/sessions/{sid}").json()["messages"]
        assert after == stored
        third = _turn(http, sid, "Thanks!")
        full = [
            *history,
            ChatMessage(role="assistant", content=second["message"]["content"]),
            ChatMessage(role="user", content="Thanks!"),
        ]
        assert third["usage"]["prompt_tokens"] == tokenizer.count_prompt(full)


def test_reattach_with_last_event_id(server: AxonProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        sid = http.post("/v1/sessions", json={}).json()["id"]
        body = {"content": "Write a short poem about the sea.", "max_tokens": 64}
        tokens, rest = read_then_reattach(
            http, f"{server.url}/v1/sessions/{sid}/messages", server.url, body
        )
        assert rest[-1].event == "done"
        joined = "".join(e.data["text"] for e in tokens + rest if e.event == "token")
        assert joined == rest[-1].data["message"]["content"]
        assert len([e for e in rest if e.event == "token"]) >= 1


def test_terminal_chat_client(server: AxonProcess) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "axon", "chat", "--url", server.url],
        input="Say hello.\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "session sess_" in result.stderr
    reply = result.stdout.replace(">", "").strip()
    assert reply
    sid = result.stderr.split("session ", 1)[1].split()[0]
    stored = httpx.get(f"{server.url}/v1/sessions/{sid}").json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"].strip() == reply
