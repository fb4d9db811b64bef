"""The OpenAI-compatible endpoints over the embedded app."""

from __future__ import annotations

import httpx
import pytest

from support.sse import parse

CHAT = "/v1/chat/completions"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def test_models_lists_the_served_model(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["fake-model"]
    assert body["data"][0]["context_window"] == 512


async def test_completion_answers_the_last_user_message(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"model": "fake-model", "messages": [user("hi there")]})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"].startswith("You said: hi there")
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 12


async def test_streaming_sends_deltas_usage_and_done(client: httpx.AsyncClient) -> None:
    r = await client.post(
        CHAT,
        json={
            "messages": [user("stream me")],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert r.headers["content-type"].startswith("text/event-stream")
    events = parse(r.text)
    assert events[-1].data == "[DONE]"
    chunks = [e.data for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("You said: stream me")
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 12


async def test_max_tokens_and_stop(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"messages": [user("a b c")], "max_tokens": 3})
    assert r.json()["choices"][0]["finish_reason"] == "length"
    assert r.json()["usage"]["completion_tokens"] == 3
    r = await client.post(CHAT, json={"messages": [user("a b c")], "stop": ["w2"]})
    content = r.json()["choices"][0]["message"]["content"]
    assert "w2" not in content
    assert "w1" in content


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"messages": "hello"}', "messages"),
        (b'{"messages": []}', "messages"),
        (b'{"messages": [{"role": "wizard", "content": "x"}]}', "role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 4096}', "context window"),
        (b'{"messages": [{"role": "user", "content": "x"}], "n": 2}', "n"),
        (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', "UTF-8"),
        (b"", "JSON"),
    ],
)
async def test_bad_input_gets_a_400_that_says_what_is_wrong(
    client: httpx.AsyncClient, body: bytes, needle: str
) -> None:
    r = await client.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert needle.lower() in error["message"].lower() or needle == error["param"]
    assert "Traceback" not in r.text


async def test_prompt_beyond_the_context_window_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"messages": [user("word " * 2000)]})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


async def test_unknown_model_is_a_404(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"model": "gpt-9", "messages": [user("x")]})
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "model_not_found"
    assert "fake-model" in r.json()["error"]["message"]


async def test_oversized_body_is_a_413(client: httpx.AsyncClient) -> None:
    r = await client.post(CHAT, json={"messages": [user("x" * 2_000_000)]})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


async def test_openapi_document_describes_the_api(client: httpx.AsyncClient) -> None:
    doc = (await client.get("/openapi.json")).json()
    for path in (CHAT, "/v1/models", "/v1/sessions", "/v1/sessions/{session_id}/messages"):
        assert path in doc["paths"]


async def test_health_readiness_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["checks"]) >= {"model", "store"}
    await client.post(CHAT, json={"messages": [user("count me")]})
    text = (await client.get("/metrics")).text
    assert "gen_ai_server_time_to_first_token_seconds_bucket" in text
    assert (
        'axon_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    )
