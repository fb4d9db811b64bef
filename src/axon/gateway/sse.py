"""Server-sent events: framing, and the two relays (session events, OpenAI chunks).

Each stream entry (a batch of tokens) becomes one SSE write, never one per token: the
per-message costs of a Python server are what limit its throughput.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from axon.core.errors import AxonError, from_code
from axon.core.types import EventKind, StreamEvent
from axon.streaming.base import Entry

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"
HEADERS = {
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    # Tell nginx-style proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}


def json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


def frame(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    parts = []
    if event:
        parts.append(f"event: {event}\n")
    if id:
        parts.append(f"id: {id}\n")
    parts.append(f"data: {json.dumps(data, separators=(',', ':'), default=str)}\n\n")
    return "".join(parts).encode()


def error_of(event: StreamEvent) -> AxonError:
    return from_code(event.error_code or "internal_error", event.error_message or "failed")


async def session_events(
    entries: AsyncIterator[Entry | None],
    on_final: Callable[[StreamEvent], Awaitable[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    """Session API events: ``token`` per entry, then ``done`` or ``error``. ``on_final``
    stores the reply and returns the body of the final event."""
    async for entry in entries:
        if entry is None:
            yield KEEPALIVE
            continue
        entry_id, event = entry
        if event.kind is EventKind.TOKENS:
            yield frame({"text": event.text}, event="token", id=entry_id)
        elif event.kind is EventKind.DONE:
            yield frame(await on_final(event), event="done", id=entry_id)
        else:
            await on_final(event)
            yield frame(error_of(event).to_body(), event="error", id=entry_id)


def usage_body(event: StreamEvent) -> dict[str, int]:
    usage = event.usage
    prompt = usage.prompt_tokens if usage else 0
    completion = usage.completion_tokens if usage else 0
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def openai_finish_reason(event: StreamEvent) -> str:
    # OpenAI knows "stop" and "length"; a cancelled reply ended early, like a stop.
    return "length" if event.finish_reason == "length" else "stop"


async def openai_chunks(
    request_id: str,
    model: str,
    entries: AsyncIterator[Entry | None],
    *,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events ending with ``data: [DONE]``."""
    created = int(time.time())
    head = f'{{"id":"{request_id}","object":"chat.completion.chunk","created":{created},'
    head += f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":'

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {head}[{json.dumps(choice, separators=(',', ':'))}]}}\n\n".encode()

    yield chunk({"role": "assistant", "content": ""})
    async for entry in entries:
        if entry is None:
            yield KEEPALIVE
            continue
        event = entry[1]
        if event.kind is EventKind.TOKENS:
            yield chunk({"content": event.text})
        elif event.kind is EventKind.DONE:
            yield chunk({}, openai_finish_reason(event))
            if include_usage:
                body = f'data: {head}[],"usage":{json.dumps(usage_body(event))}}}\n\n'
                yield body.encode()
        else:
            yield frame(error_of(event).to_body())
    yield DONE
