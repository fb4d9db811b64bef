"""The in-process limiter forgets ended windows, so a stream of new keys (addresses,
tenants) cannot grow its memory without bound."""

from __future__ import annotations

import asyncio

import pytest

from axon.ratelimit import memory
from axon.ratelimit.base import Limit


async def test_ended_windows_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_MAX_KEYS", 10)
    limiter = memory.MemoryRateLimiter()
    for i in range(20):
        assert (await limiter.admit([Limit(f"ip-{i}", 1, 1, window_s=0.05)])).allowed
    await asyncio.sleep(0.1)  # every one of those windows has ended

    assert (await limiter.admit([Limit("one-more", 1, 1, window_s=60)])).allowed
    assert len(limiter._counts) == 1
