"""In-process fixed-window rate limiter (one replica only: the embedded default)."""

from __future__ import annotations

import time

from axon.ratelimit.base import Decision, RateLimiter


class MemoryRateLimiter(RateLimiter):
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str, limit: int, window_s: float, cost: int = 1) -> Decision:
        now = time.time()
        window = int(now // window_s)
        if len(self._windows) > 100_000:  # drop stale windows so keys cannot grow forever
            self._windows = {k: v for k, v in self._windows.items() if v[0] == window}
        start, used = self._windows.get(key, (window, 0))
        if start != window:
            used = 0
        if used + cost > limit:
            return Decision(False, max(0, limit - used), (window + 1) * window_s - now)
        self._windows[key] = (window, used + cost)
        return Decision(True, limit - used - cost, 0.0)
