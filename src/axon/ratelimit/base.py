"""Rate limiter interface: fixed windows of counts, checked together and all-or-nothing,
plus leases that cap how many things run at once.

Windows are aligned to wall-clock time (``window = floor(now / window_s)``), so every
replica counts into the same window without talking to the others.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limit:
    """Spend ``cost`` of a budget of ``limit`` per ``window_s`` held under ``key``."""

    key: str
    limit: int
    cost: int = 1
    window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    #: What is left of each limit after this hit (before it, when refused), in order.
    remaining: tuple[int, ...]
    #: Seconds until the window that refused the hit ends (0 when allowed).
    retry_after_s: float
    #: The index of the limit that refused the hit (None when allowed).
    refused: int | None = None
    #: The window each limit was counted in, so a reservation is settled in the same one.
    windows: tuple[int, ...] = ()


def window_of(window_s: float, now: float | None = None) -> int:
    return int((time.time() if now is None else now) // window_s)


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    async def admit(self, limits: Sequence[Limit]) -> Decision:
        """Count every limit's cost if all of them fit, else none (atomically, across
        replicas): a refused request spends nothing, not even on the limits it fitted."""

    @abc.abstractmethod
    async def adjust(self, key: str, window_s: float, window: int, delta: int) -> None:
        """Add ``delta`` (negative to give back) to ``key``'s count in ``window``, if that
        window still exists: settles a reservation with what was really used."""

    @abc.abstractmethod
    async def acquire(self, key: str, limit: int, holder: str, lease_s: float) -> bool:
        """Take one of ``limit`` slots for ``holder`` until released or ``lease_s`` passes
        (a holder that died gives its slot back by expiry). False when all are taken."""

    @abc.abstractmethod
    async def release(self, key: str, holder: str) -> None: ...

    async def hit(self, key: str, limit: int, window_s: float, cost: int = 1) -> Decision:
        """One limit: count ``cost`` against ``key`` if it fits."""
        return await self.admit([Limit(key, limit, cost, window_s)])

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
