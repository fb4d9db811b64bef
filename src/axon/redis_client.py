"""The one place that maps "Redis cannot be reached" to Axon's error tree, shared by every
Redis-backed seam (streams, cache, rate limits)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon.core.errors import Unavailable


@contextmanager
def unavailable() -> Iterator[None]:
    """Translate a lost, refused or timed-out Redis call into the retryable ``Unavailable``.

    ``ReadOnlyError`` is included because right after a failover a connection may still
    point at the demoted primary; a retry reaches the new one.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
        raise Unavailable("Redis is unavailable") from exc
