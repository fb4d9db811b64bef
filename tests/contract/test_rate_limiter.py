"""The rate limiter contract, run over every backend: a fixed window that refuses what does
not fit without counting it, per key, and resets with the next window."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from axon.core.errors import Unavailable
from axon.ratelimit.base import Limit, RateLimiter
from axon.ratelimit.redis import RedisRateLimiter

WINDOW_S = 60.0


async def test_allows_up_to_the_limit_then_refuses(rate_limiter: RateLimiter) -> None:
    decisions = [await rate_limiter.hit("key", limit=3, window_s=WINDOW_S) for _ in range(4)]

    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert [d.remaining[0] for d in decisions] == [2, 1, 0, 0]
    assert [d.retry_after_s for d in decisions[:3]] == [0.0, 0.0, 0.0]
    assert 0 < decisions[3].retry_after_s <= WINDOW_S


async def test_a_refused_hit_is_not_counted(rate_limiter: RateLimiter) -> None:
    assert (await rate_limiter.hit("key", limit=3, window_s=WINDOW_S, cost=2)).allowed
    refused = await rate_limiter.hit("key", limit=3, window_s=WINDOW_S, cost=2)
    assert (refused.allowed, refused.remaining[0]) == (False, 1)

    last = await rate_limiter.hit("key", limit=3, window_s=WINDOW_S, cost=1)
    assert (last.allowed, last.remaining[0]) == (True, 0)


async def test_a_cost_above_the_limit_never_fits(rate_limiter: RateLimiter) -> None:
    decision = await rate_limiter.hit("key", limit=5, window_s=WINDOW_S, cost=6)
    assert (decision.allowed, decision.remaining[0]) == (False, 5)


async def test_keys_are_counted_apart(rate_limiter: RateLimiter) -> None:
    assert (await rate_limiter.hit("a", limit=1, window_s=WINDOW_S)).allowed
    assert not (await rate_limiter.hit("a", limit=1, window_s=WINDOW_S)).allowed
    assert (await rate_limiter.hit("b", limit=1, window_s=WINDOW_S)).allowed


async def test_the_next_window_starts_afresh(rate_limiter: RateLimiter) -> None:
    window_s = 0.5
    await rate_limiter.hit("key", limit=1, window_s=window_s)
    refused = await rate_limiter.hit("key", limit=1, window_s=window_s)
    if refused.allowed:  # the first hit fell at the very end of a window
        refused = await rate_limiter.hit("key", limit=1, window_s=window_s)
    assert not refused.allowed
    assert refused.retry_after_s <= window_s

    await asyncio.sleep(refused.retry_after_s + 0.05)

    assert (await rate_limiter.hit("key", limit=1, window_s=window_s)).allowed


async def test_concurrent_hits_never_exceed_the_limit(rate_limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(
        *(rate_limiter.hit("key", limit=10, window_s=WINDOW_S) for _ in range(50))
    )
    assert sum(d.allowed for d in decisions) == 10


async def test_redis_unreachable_raises_unavailable() -> None:
    client = Redis(port=1, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(Unavailable):
            await RedisRateLimiter(client, prefix="x:").hit("key", limit=1, window_s=1.0)
    finally:
        await client.aclose()


async def test_several_limits_are_counted_all_or_nothing(rate_limiter: RateLimiter) -> None:
    limits = [Limit("rpm", 10, 1), Limit("tpm", 100, 60)]
    first = await rate_limiter.admit(limits)
    assert (first.allowed, first.remaining) == (True, (9, 40))

    refused = await rate_limiter.admit(limits)
    assert (refused.allowed, refused.refused) == (False, 1)
    assert refused.remaining == (9, 40)
    assert 0 < refused.retry_after_s <= 60

    # The refused request spent nothing, not even on the limit it fitted.
    smaller = await rate_limiter.admit([Limit("rpm", 10, 1), Limit("tpm", 100, 40)])
    assert (smaller.allowed, smaller.remaining) == (True, (8, 0))


async def test_adjust_settles_a_reservation_in_its_window(rate_limiter: RateLimiter) -> None:
    decision = await rate_limiter.admit([Limit("tpm", 100, 80)])
    assert decision.allowed
    await rate_limiter.adjust("tpm", 60.0, decision.windows[0], -70)  # used 10 of 80

    after = await rate_limiter.admit([Limit("tpm", 100, 90)])
    assert (after.allowed, after.remaining) == (True, (0,))
    # Settling never drives a count below zero, nor creates a window that is gone.
    await rate_limiter.adjust("tpm", 60.0, decision.windows[0], -1000)
    await rate_limiter.adjust("never-used", 60.0, decision.windows[0], 5)
    assert (await rate_limiter.admit([Limit("never-used", 1, 1)])).allowed


async def test_slots_are_held_until_released_or_expired(rate_limiter: RateLimiter) -> None:
    assert await rate_limiter.acquire("streams", 2, "a", lease_s=60)
    assert await rate_limiter.acquire("streams", 2, "b", lease_s=0.3)
    assert not await rate_limiter.acquire("streams", 2, "c", lease_s=60)
    # Holding twice takes one slot.
    assert await rate_limiter.acquire("streams", 2, "a", lease_s=60)

    await rate_limiter.release("streams", "a")
    assert await rate_limiter.acquire("streams", 2, "c", lease_s=60)
    assert not await rate_limiter.acquire("streams", 2, "d", lease_s=60)
    await asyncio.sleep(0.5)  # b's lease ran out: its holder died without releasing
    assert await rate_limiter.acquire("streams", 2, "d", lease_s=60)


async def test_concurrent_slots_never_exceed_the_limit(rate_limiter: RateLimiter) -> None:
    taken = await asyncio.gather(
        *(rate_limiter.acquire("streams", 5, f"h{i}", lease_s=60) for i in range(40))
    )
    assert sum(taken) == 5
