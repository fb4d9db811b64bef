"""Server-sent events: framing, and the two relays (session events, OpenAI chunks).

Each stream entry (a batch of tokens) becomes one SSE write, never one per token: the
per-message costs of a Python server are what limit its throughput. Once a stream's headers
are sent, an error can no longer change the status: it ends the stream with an ``error``
frame instead (never a silently dropped connection).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from axon.core.errors import AxonError, from_code
from axon.core.types import EventKind, StreamEvent
from axon.gateway.drain import Drain
from axon.gateway.errors import error_body
from axon.observability import metrics
from axon.sessions.relay import Final, Relay

log = logging.getLogger(__name__)

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


def error_frame(
    error: AxonError, *, reattach: bool = False, event: str | None = "error", id: str | None = None
) -> bytes:
    """``error`` as an SSE frame, for a stream whose headers are already sent. With
    ``reattach`` the reply itself goes on (this relay failed or is shutting down): the
    client re-attaches with ``Last-Event-ID``, on any replica."""
    if error.status >= 500:
        log.warning("stream failed", extra={"code": error.code, "reattach": reattach})
    return frame({**error_body(error), "reattach": reattach}, event=event, id=id)


def error_of(event: StreamEvent) -> AxonError:
    return from_code(event.error_code or "internal_error", event.error_message or "failed")


def _unexpected(exc: Exception) -> AxonError:
    log.error("stream failed unexpectedly", exc_info=exc)
    return AxonError("internal error; see the server log")


async def session_events(
    relay: Relay,
    final_body: Callable[[Final], dict[str, Any]],
    head: bytes = b"",
    drain: Drain | None = None,
) -> AsyncIterator[bytes]:
    """Session API events: ``token`` per entry, then ``done`` (``final_body``) or
    ``error``. An error of the relay itself (a backend lost mid-stream, this server
    draining) ends the stream with an ``error`` event that asks for a re-attach: the reply
    is unaffected. Only the reply's own final error is the end of it."""
    metrics.OPEN_STREAMS.inc()
    try:
        if head:
            yield head
        async for item in relay:
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, Final):
                if item.event.kind is EventKind.DONE:
                    yield frame(final_body(item), event="done", id=item.event_id)
                else:
                    yield error_frame(error_of(item.event), id=item.event_id)
                return
            else:
                yield frame({"text": item[1].text}, event="token", id=item[0])
            if drain is not None:
                drain.check()
    except AxonError as exc:
        yield error_frame(exc, reattach=exc.retryable)
    except Exception as exc:
        yield error_frame(_unexpected(exc), reattach=True)
    finally:
        metrics.OPEN_STREAMS.dec()
        await relay.aclose()


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


async def openai_chunks(relay: Relay, *, include_usage: bool) -> AsyncIterator[bytes]:
    """``chat.completion.chunk`` events ending with ``data: [DONE]``."""
    created = int(time.time())
    head = f'{{"id":"{relay.request_id}","object":"chat.completion.chunk","created":{created},'
    head += f'"model":{json.dumps(relay.model)},"system_fingerprint":null,"choices":'

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return f"data: {head}[{json.dumps(choice, separators=(',', ':'))}]}}\n\n".encode()

    metrics.OPEN_STREAMS.inc()
    try:
        yield chunk({"role": "assistant", "content": ""})
        async for item in relay:
            if item is None:
                yield KEEPALIVE
            elif isinstance(item, Final):
                if item.event.kind is EventKind.DONE:
                    yield chunk({}, openai_finish_reason(item.event))
                    if include_usage:
                        usage = json.dumps(usage_body(item.event))
                        yield f'data: {head}[],"usage":{usage}}}\n\n'.encode()
                else:
                    yield error_frame(error_of(item.event), event=None)
            else:
                yield chunk({"content": item[1].text})
        yield DONE
    except AxonError as exc:
        yield error_frame(exc, event=None)
    except Exception as exc:
        yield error_frame(_unexpected(exc), event=None)
    finally:
        metrics.OPEN_STREAMS.dec()
        await relay.aclose()
