"""Helpers for tests of the worker over the in-memory queue and streams."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from axon.core.ids import new_id
from axon.core.types import ChatMessage, Completion, Job, SamplingParams, StreamEvent
from axon.streaming.memory import MemoryTokenStreams

MODEL = "fake"
DELIVERY_LIMIT = 3


def make_job(
    content: str = "hello there",
    *,
    max_tokens: int | None = None,
    stop: tuple[str, ...] = (),
    deadline_in_s: float = 60.0,
) -> Job:
    return Job(
        request_id=new_id("req"),
        model=MODEL,
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=content),
        ],
        params=SamplingParams(max_tokens=max_tokens, stop=stop),
        session_id="sess_test",
        deadline=time.time() + deadline_in_s,
    )


async def eventually(predicate: Callable[[], bool], *, within_s: float = 5.0) -> None:
    """Wait until ``predicate`` holds (a guard against hanging, not a timing assertion)."""
    give_up = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > give_up:
            raise AssertionError("condition never became true")
        await asyncio.sleep(0.01)


async def events(streams: MemoryTokenStreams, request_id: str) -> list[StreamEvent]:
    return [event for _, event in await streams.read(request_id)]


async def completions(streams: MemoryTokenStreams) -> list[Completion]:
    return [c for _, c in await streams.read_completions("tests", "t1", timeout_s=0)]
