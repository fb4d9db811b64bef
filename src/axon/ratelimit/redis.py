"""Fixed-window rate limiter on Redis, so that every gateway replica counts against the same
windows."""

from __future__ import annotations

import math
import time

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon.core.errors import Unavailable
from axon.ratelimit.base import Decision, RateLimiter

# Check and count in one atomic step: two replicas racing for the last unit of a window
# must not both get it, and a refused hit is not counted (so a client hammering a full
# window does not push its own retry further out).
# KEYS[1]: the window's counter. ARGV: limit, cost, expiry in ms.
# Returns {allowed (0/1), remaining}.
_HIT = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
local limit = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
if used + cost > limit then
  return {0, limit - used}
end
local now = redis.call('INCRBY', KEYS[1], cost)
if now == cost then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return {1, limit - now}
"""

# Windows are numbered from the epoch on each replica's clock; keep a counter a little past
# its window's end so that a replica whose clock lags slightly still finds it.
_CLOCK_SKEW_MS = 1000


class RedisRateLimiter(RateLimiter):
    """Fixed windows aligned to wall-clock time (like ``MemoryRateLimiter``), one Redis key
    per key and window, expiring shortly after the window ends. The caller owns ``client``."""

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._prefix = prefix
        self._hit = client.register_script(_HIT)

    async def hit(self, key: str, limit: int, window_s: float, cost: int = 1) -> Decision:
        now = time.time()
        window = int(now // window_s)
        window_end = (window + 1) * window_s
        expiry_ms = math.ceil((window_end - now) * 1000) + _CLOCK_SKEW_MS
        try:
            allowed, remaining = await self._hit(
                keys=[f"{self._prefix}ratelimit:{key}:{window}"], args=[limit, cost, expiry_ms]
            )
        except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
            raise Unavailable("Redis is unavailable") from exc
        if allowed:
            return Decision(True, max(0, int(remaining)), 0.0)
        return Decision(False, max(0, int(remaining)), window_end - now)
