"""The session cache contract, run over every backend: a window of the newest messages in
order, without duplicates; a miss stays a miss; put replaces; invalidate forgets."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from axon.core.errors import Unavailable
from axon.sessions.cache import SessionCache
from axon.sessions.records import MessageRecord
from axon.sessions.redis_cache import RedisSessionCache

# The fixtures keep this many messages per session.
MAX_MESSAGES = 5


def message(seq: int, content: str | None = None, session_id: str = "s1") -> MessageRecord:
    return MessageRecord(
        id=f"{session_id}-m{seq}",
        session_id=session_id,
        tenant="t1",
        seq=seq,
        role="user" if seq % 2 else "assistant",
        content=content if content is not None else f"message {seq}",
        created_at=datetime(2025, 1, 1, 12, 0, seq % 60, tzinfo=UTC),
    )


async def test_unknown_session_is_a_miss(session_cache: SessionCache) -> None:
    assert await session_cache.get("s1") is None


async def test_put_keeps_the_newest_messages_in_order(session_cache: SessionCache) -> None:
    messages = [message(seq) for seq in (7, 1, 3, 2, 6, 5, 4)]

    await session_cache.put("s1", messages)

    assert await session_cache.get("s1") == [message(seq) for seq in range(3, 8)]
    assert await session_cache.get("s2") is None


async def test_an_empty_session_is_cached_not_missed(session_cache: SessionCache) -> None:
    await session_cache.put("s1", [])
    assert await session_cache.get("s1") == []

    await session_cache.append("s1", message(1))
    assert await session_cache.get("s1") == [message(1)]


async def test_put_replaces_the_whole_window(session_cache: SessionCache) -> None:
    await session_cache.put("s1", [message(1), message(2)])
    await session_cache.put("s1", [message(3)])
    assert await session_cache.get("s1") == [message(3)]


async def test_append_to_a_missing_session_stays_a_miss(session_cache: SessionCache) -> None:
    await session_cache.append("s1", message(1))
    assert await session_cache.get("s1") is None


async def test_append_keeps_order_and_the_window(session_cache: SessionCache) -> None:
    await session_cache.put("s1", [message(1), message(2), message(4)])

    await session_cache.append("s1", message(3))
    assert await session_cache.get("s1") == [message(seq) for seq in (1, 2, 3, 4)]

    for seq in (5, 6, 7):
        await session_cache.append("s1", message(seq))
    assert await session_cache.get("s1") == [message(seq) for seq in range(3, 8)]

    # Older than everything cached: it falls out of the window at once.
    await session_cache.append("s1", message(0))
    assert await session_cache.get("s1") == [message(seq) for seq in range(3, 8)]


async def test_append_of_a_known_message_replaces_it(session_cache: SessionCache) -> None:
    await session_cache.put("s1", [message(1), message(2, "partial")])

    await session_cache.append("s1", message(2, "the full reply"))
    await session_cache.append("s1", message(2, "the full reply"))

    assert await session_cache.get("s1") == [message(1), message(2, "the full reply")]


async def test_invalidate_forgets_one_session(session_cache: SessionCache) -> None:
    await session_cache.put("s1", [message(1)])
    await session_cache.put("s2", [message(1, session_id="s2")])

    await session_cache.invalidate("s1")

    assert await session_cache.get("s1") is None
    assert await session_cache.get("s2") == [message(1, session_id="s2")]


@pytest.mark.integration
async def test_redis_writes_refresh_the_ttl(redis_client: tuple[Redis, str]) -> None:
    client, prefix = redis_client
    cache = RedisSessionCache(client, prefix=prefix, max_messages=MAX_MESSAGES, ttl_s=60)

    await cache.put("s1", [message(1)])
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    assert len(keys) == 2
    for key in keys:
        await client.expire(key, 5)

    await cache.append("s1", message(2))

    for key in keys:
        assert 5 < await client.ttl(key) <= 60


async def test_redis_unreachable_raises_unavailable() -> None:
    client = Redis(port=1, retry=Retry(NoBackoff(), 0))
    cache = RedisSessionCache(client, prefix="x:", max_messages=MAX_MESSAGES, ttl_s=60)
    try:
        with pytest.raises(Unavailable):
            await cache.get("s1")
        with pytest.raises(Unavailable):
            await cache.put("s1", [message(1)])
        with pytest.raises(Unavailable):
            await cache.append("s1", message(1))
    finally:
        await client.aclose()
