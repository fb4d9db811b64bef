"""Rate limiter interface: a fixed window of counts per key."""

from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    #: Seconds until the window that refused the hit ends (0 when allowed).
    retry_after_s: float


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def hit(self, key: str, limit: int, window_s: float, cost: int = 1) -> Decision:
        """Count ``cost`` against ``key`` in the current window and say whether it fits.
        A refused hit is not counted."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
