"""Fixtures that yield each implementation of a seam (in memory, and on the real service) so
that one contract suite holds every backend to the same behaviour.

Real services get a key or queue prefix unique to each test and are cleaned up after it.
A service that cannot be reached skips its tests locally and fails them in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import NoReturn
from uuid import uuid4

import aio_pika
import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from axon.queue.base import JobQueue
from axon.queue.memory import MemoryJobQueue
from axon.queue.rabbitmq import RabbitMQJobQueue
from axon.ratelimit.base import RateLimiter
from axon.ratelimit.memory import MemoryRateLimiter
from axon.ratelimit.redis import RedisRateLimiter
from axon.sessions.cache import SessionCache
from axon.sessions.memory_cache import MemorySessionCache
from axon.sessions.redis_cache import RedisSessionCache
from axon.streaming.base import TokenStreams
from axon.streaming.memory import MemoryTokenStreams
from axon.streaming.redis import RedisTokenStreams
from support.services import RABBITMQ_URL, REDIS_URL, missing

#: Model name of every job the queue tests publish (its queues are deleted afterwards).
MODEL = "contract-model"
DELIVERY_LIMIT = 3
#: Short, so the reclaim test is quick; long enough that a slow run does not reclaim early.
CLAIM_AFTER_S = 0.5
STREAM_TTL_S = 60
CACHE_MAX_MESSAGES = 5
CACHE_TTL_S = 60


def _unreachable(service: str, exc: BaseException) -> NoReturn:
    missing(f"{service} is unreachable: {type(exc).__name__}: {exc}")


def _unique_prefix() -> str:
    return f"axon-test-{uuid4().hex[:8]}"


@asynccontextmanager
async def redis_env() -> AsyncIterator[tuple[Redis, str]]:
    """A client and a key prefix of its own; every key under the prefix is deleted after."""
    # No retries: a Redis that is down should skip (or fail) at once, not after backoffs.
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        _unreachable("Redis", exc)
    prefix = f"{_unique_prefix()}:"
    try:
        yield client, prefix
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@asynccontextmanager
async def rabbitmq_env() -> AsyncIterator[str]:
    """A queue prefix of its own; the test model's queues are deleted after."""
    try:
        connection = await asyncio.wait_for(aio_pika.connect(RABBITMQ_URL), 5)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        _unreachable("RabbitMQ", exc)
    prefix = _unique_prefix()
    try:
        yield prefix
    finally:
        channel = await connection.channel()
        for kind in ("jobs", "dead"):
            await channel.queue_delete(f"{prefix}.{kind}.{MODEL}")
        await connection.close()


@pytest.fixture
def model() -> str:
    return MODEL


@pytest.fixture
def delivery_limit() -> int:
    return DELIVERY_LIMIT


@pytest.fixture
def claim_after_s() -> float:
    return CLAIM_AFTER_S


@pytest.fixture
def rabbitmq_url() -> str:
    return RABBITMQ_URL


@pytest.fixture
async def redis_client() -> AsyncIterator[tuple[Redis, str]]:
    """For tests of the Redis adapters alone: ``(client, key prefix)``."""
    async with redis_env() as env:
        yield env


@pytest.fixture
async def rabbitmq_prefix() -> AsyncIterator[str]:
    """For tests of the RabbitMQ adapter alone: a queue prefix, cleaned up after."""
    async with rabbitmq_env() as prefix:
        yield prefix


REAL_REDIS = pytest.param("redis", marks=pytest.mark.integration)
REAL_RABBITMQ = pytest.param("rabbitmq", marks=pytest.mark.integration)


@pytest.fixture(params=["memory", REAL_REDIS])
async def streams(request: pytest.FixtureRequest) -> AsyncIterator[TokenStreams]:
    if request.param == "memory":
        memory = MemoryTokenStreams(ttl_s=STREAM_TTL_S, maxlen=1000)
        memory.claim_after_s = CLAIM_AFTER_S
        yield memory
        return
    async with redis_env() as (client, prefix):
        yield RedisTokenStreams(
            client,
            prefix=prefix,
            ttl_s=STREAM_TTL_S,
            maxlen=1000,
            claim_after_ms=int(CLAIM_AFTER_S * 1000),
        )


@pytest.fixture(params=["memory", REAL_RABBITMQ])
async def job_queue(request: pytest.FixtureRequest) -> AsyncIterator[JobQueue]:
    if request.param == "memory":
        yield MemoryJobQueue(delivery_limit=DELIVERY_LIMIT)
        return
    async with rabbitmq_env() as prefix:
        queue = RabbitMQJobQueue(
            RABBITMQ_URL, prefix=prefix, delivery_limit=DELIVERY_LIMIT, publish_timeout_s=5.0
        )
        await queue.start()
        try:
            yield queue
        finally:
            await queue.close()


@pytest.fixture(params=["memory", REAL_REDIS])
async def rate_limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        yield MemoryRateLimiter()
        return
    async with redis_env() as (client, prefix):
        yield RedisRateLimiter(client, prefix=prefix)


@pytest.fixture(params=["memory", REAL_REDIS])
async def session_cache(request: pytest.FixtureRequest) -> AsyncIterator[SessionCache]:
    if request.param == "memory":
        yield MemorySessionCache(max_messages=CACHE_MAX_MESSAGES, ttl_s=CACHE_TTL_S)
        return
    async with redis_env() as (client, prefix):
        yield RedisSessionCache(
            client, prefix=prefix, max_messages=CACHE_MAX_MESSAGES, ttl_s=CACHE_TTL_S
        )
