"""In-process rate limiter (one replica only: the embedded default)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from axon.ratelimit.base import Decision, Limit, RateLimiter, window_of

#: Past this many live counters, ended windows are dropped so keys cannot grow forever.
_MAX_KEYS = 100_000


class MemoryRateLimiter(RateLimiter):
    def __init__(self) -> None:
        #: (key, window) -> (count, when the window ends)
        self._counts: dict[tuple[str, int], tuple[int, float]] = {}
        self._leases: dict[str, dict[str, float]] = {}

    def _used(self, key: str, window: int) -> int:
        return self._counts.get((key, window), (0, 0.0))[0]

    async def admit(self, limits: Sequence[Limit]) -> Decision:
        now = time.time()
        if len(self._counts) > _MAX_KEYS:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
        windows = tuple(window_of(lim.window_s, now) for lim in limits)
        used = [self._used(lim.key, w) for lim, w in zip(limits, windows, strict=True)]
        for i, lim in enumerate(limits):
            if used[i] + lim.cost > lim.limit:
                retry = (windows[i] + 1) * lim.window_s - now
                remaining = tuple(max(0, x.limit - u) for x, u in zip(limits, used, strict=True))
                return Decision(False, remaining, retry, i, windows)
        for lim, w, u in zip(limits, windows, used, strict=True):
            self._counts[(lim.key, w)] = (u + lim.cost, (w + 1) * lim.window_s)
        remaining = tuple(max(0, x.limit - u - x.cost) for x, u in zip(limits, used, strict=True))
        return Decision(True, remaining, 0.0, None, windows)

    async def adjust(self, key: str, window_s: float, window: int, delta: int) -> None:
        found = self._counts.get((key, window))
        if found is not None:
            self._counts[(key, window)] = (max(0, found[0] + delta), found[1])

    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        now = time.monotonic()
        held = {h: t for h, t in self._leases.get(key, {}).items() if t > now}
        self._leases[key] = held
        if holder not in held and len(held) >= limit:
            return False
        held[holder] = now + lease_s
        return True

    async def release(self, key: str, holder: str) -> None:
        held = self._leases.get(key)
        if held is not None:
            held.pop(holder, None)
            if not held:
                del self._leases[key]
