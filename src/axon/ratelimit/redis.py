"""Rate limiter on Redis, so that every gateway replica counts against the same windows and
the same stream slots. Each operation is one Lua script: atomic, one round trip."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from redis.asyncio import Redis

from axon.ratelimit.base import Decision, Limit, RateLimiter, window_of
from axon.redis_client import unavailable

# Check every counter, then count all or none: two replicas racing for the last unit of a
# window must not both get it, and a refused request is not counted anywhere (so a client
# hammering a full window does not push its own retry further out).
# KEYS: one counter per limit. ARGV: expiry in ms, then limit and cost per key.
# Returns {allowed (0/1), refused index (1-based, 0 if none), used before, per key...}.
_ADMIT = """
local used = {}
for i = 1, #KEYS do
  used[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, #KEYS do
  if used[i] + tonumber(ARGV[2 * i + 1]) > tonumber(ARGV[2 * i]) then
    local out = {0, i}
    for j = 1, #KEYS do out[j + 2] = used[j] end
    return out
  end
end
local out = {1, 0}
for i = 1, #KEYS do
  local cost = tonumber(ARGV[2 * i + 1])
  local now = redis.call('INCRBY', KEYS[i], cost)
  if now == cost then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  end
  out[i + 2] = used[i]
end
return out
"""

# Settle a reservation: only a window that still exists is adjusted (never recreated
# without an expiry), and a count never goes below zero.
_ADJUST = """
local now = redis.call('GET', KEYS[1])
if not now then return 0 end
local value = math.max(0, tonumber(now) + tonumber(ARGV[1]))
redis.call('SET', KEYS[1], value, 'KEEPTTL')
return value
"""

# Slots as a sorted set of holders scored by lease expiry: expired leases are dropped
# first, so a replica that died mid-stream frees its slots within a lease.
# KEYS[1]: the set. ARGV: now ms, lease ms, limit, holder.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4]) and
   redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Windows are numbered from the epoch on each replica's clock; keep a counter a little past
# its window's end so that a replica whose clock lags slightly still finds it.
_CLOCK_SKEW_MS = 1000


class RedisRateLimiter(RateLimiter):
    """One Redis key per limit and window, expiring shortly after the window ends. The
    caller owns ``client``."""

    def __init__(self, client: Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._admit = client.register_script(_ADMIT)
        self._adjust = client.register_script(_ADJUST)
        self._acquire = client.register_script(_ACQUIRE)

    def _counter(self, key: str, window: int) -> str:
        return f"{self._prefix}ratelimit:{key}:{window}"

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        if not limits:
            return Decision(True, (), 0.0)
        now = time.time()
        windows = tuple(window_of(lim.window_s, now) for lim in limits)
        longest = max(lim.window_s for lim in limits)
        expiry_ms = math.ceil(longest * 1000) + _CLOCK_SKEW_MS
        args: list[int] = [expiry_ms]
        for lim in limits:
            args += [lim.limit, lim.cost]
        keys = [self._counter(lim.key, w) for lim, w in zip(limits, windows, strict=True)]
        with unavailable():
            result = await self._admit(keys=keys, args=args)
        allowed, refused_at, *used = (int(v) for v in result)
        if allowed:
            remaining = tuple(
                max(0, lim.limit - u - lim.cost) for lim, u in zip(limits, used, strict=True)
            )
            return Decision(True, remaining, 0.0, None, windows)
        i = refused_at - 1
        remaining = tuple(max(0, lim.limit - u) for lim, u in zip(limits, used, strict=True))
        retry = (windows[i] + 1) * limits[i].window_s - now
        return Decision(False, remaining, retry, i, windows)

    async def adjust(self, key: str, window_s: float, window: int, delta: int) -> None:
        if delta:
            with unavailable():
                await self._adjust(keys=[self._counter(key, window)], args=[delta])

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        now_ms = int(time.time() * 1000)
        with unavailable():
            taken = await self._acquire(
                keys=[f"{self._prefix}slots:{key}"],
                args=[now_ms, int(lease_s * 1000), limit, holder],
            )
        return bool(taken)

    async def release(self, key: str, holder: str) -> None:
        with unavailable():
            await self._client.zrem(f"{self._prefix}slots:{key}", holder)
