"""Admission control per caller: requests and tokens per minute per key and per tenant, and
open streams per tenant, counted in the rate limiter's backend (Redis in production) so that
every replica enforces the same numbers.

Tokens are reserved at admission (prompt tokens plus the reply budget) and settled with the
real usage when the reply ends, so a caller is never charged for tokens it did not get and
can never overspend by asking for long replies concurrently.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

from axon.config import LimitSettings
from axon.core.errors import RateLimited, Unavailable
from axon.core.types import Principal
from axon.observability import metrics
from axon.ratelimit.base import Limit, RateLimiter

log = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class _Counted:
    #: ``key_requests``, ``key_tokens``, ``tenant_requests`` or ``tenant_tokens``.
    name: str
    limit: Limit


@dataclass(slots=True)
class Reservation:
    """What one admitted request holds: tokens to settle, and the headers to answer with."""

    tokens: int = 0
    counted: list[tuple[_Counted, int]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False


@dataclass(slots=True)
class StreamSlot:
    """One open client stream, held until the stream ends (or its lease expires)."""

    keys: list[str]
    holder: str
    released: bool = False


def _reset(seconds: float) -> str:
    # OpenAI's format for x-ratelimit-reset-*: a duration such as "6s" or "1m0s".
    whole = max(0, math.ceil(seconds))
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class Admission:
    def __init__(self, limiter: RateLimiter, settings: LimitSettings, lease_s: float) -> None:
        self._limiter = limiter
        self._settings = settings
        self._lease_s = lease_s

    def _counters(self, principal: Principal, tokens: int) -> list[_Counted]:
        s = self._settings
        out: list[_Counted] = []

        def add(name: str, key: str, limit: int, cost: int) -> None:
            if limit > 0:
                out.append(_Counted(name, Limit(key, limit, cost, WINDOW_S)))

        if not principal.anonymous:
            rpm = principal.requests_per_minute
            tpm = principal.tokens_per_minute
            who = f"{principal.tenant}:{principal.subject}"
            add("key_requests", f"rpm:{who}", s.key_requests_per_minute if rpm is None else rpm, 1)
            add("key_tokens", f"tpm:{who}", s.key_tokens_per_minute if tpm is None else tpm, tokens)
        tenant = f"tenant:{principal.tenant}"
        add("tenant_requests", f"rpm:{tenant}", s.tenant_requests_per_minute, 1)
        add("tenant_tokens", f"tpm:{tenant}", s.tenant_tokens_per_minute, tokens)
        return out

    def _backend_down(self, exc: Unavailable) -> None:
        if self._settings.on_backend_failure == "open":
            log.warning("rate limiter unavailable; admitting without limits (fail open)")
            return
        raise Unavailable(
            "the rate limiter is unavailable; retry shortly", headers={"Retry-After": "1"}
        ) from exc

    async def admit(self, principal: Principal, tokens: int) -> Reservation:
        """Count one request of ``tokens`` (prompt plus reply budget), or raise
        ``RateLimited`` with ``Retry-After`` and ``x-ratelimit-*`` headers."""
        counters = self._counters(principal, tokens)
        reservation = Reservation(tokens=tokens)
        if not counters:
            return reservation
        try:
            decision = await self._limiter.admit([c.limit for c in counters])
        except Unavailable as exc:
            self._backend_down(exc)
            return reservation
        headers = _headers(counters, decision.remaining, decision.retry_after_s)
        if not decision.allowed:
            assert decision.refused is not None
            refused = counters[decision.refused]
            metrics.RATE_LIMITED.labels(refused.name).inc()
            retry = max(1, math.ceil(decision.retry_after_s))
            if refused.limit.cost > refused.limit.limit:
                message = (
                    f"this request needs {refused.limit.cost} tokens (prompt plus max_tokens), "
                    f"more than the {refused.limit.limit} tokens per minute allowed "
                    f"({refused.name.replace('_', ' ')}); lower max_tokens or the prompt"
                )
            else:
                unit = "tokens" if refused.name.endswith("tokens") else "requests"
                message = (
                    f"rate limit reached: {refused.limit.limit} {unit} per minute "
                    f"({refused.name.replace('_', ' ')}); retry after {retry} s"
                )
            raise RateLimited(message, headers={**headers, "Retry-After": str(retry)})
        reservation.counted = [
            (c, w) for c, w in zip(counters, decision.windows, strict=True) if c.limit.cost
        ]
        reservation.headers = headers
        return reservation

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the reserved tokens by ``used_tokens`` (once; later calls do nothing)."""
        if reservation.settled:
            return
        reservation.settled = True
        delta = used_tokens - reservation.tokens
        for counted, window in reservation.counted:
            if counted.name.endswith("tokens") and delta:
                try:
                    await self._limiter.adjust(counted.limit.key, WINDOW_S, window, delta)
                except Unavailable:
                    log.warning("could not settle a token reservation (rate limiter down)")

    async def open_stream(self, principal: Principal, holder: str) -> StreamSlot:
        """Hold one of the tenant's (and the key's) open-stream slots, or ``RateLimited``."""
        wanted: list[tuple[str, int]] = []
        if self._settings.tenant_max_streams > 0:
            wanted.append((f"tenant:{principal.tenant}", self._settings.tenant_max_streams))
        if principal.max_streams:
            wanted.append((f"{principal.tenant}:{principal.subject}", principal.max_streams))
        slot = StreamSlot([], holder)
        try:
            for key, limit in wanted:
                if not await self._limiter.acquire(key, limit, holder, self._lease_s):
                    await self.close_stream(slot)
                    metrics.RATE_LIMITED.labels("streams").inc()
                    raise RateLimited(
                        f"too many open streams: at most {limit} at once; retry when one ends",
                        headers={"Retry-After": "1"},
                    )
                slot.keys.append(key)
        except Unavailable as exc:
            await self.close_stream(slot)
            self._backend_down(exc)
        return slot

    async def close_stream(self, slot: StreamSlot) -> None:
        if slot.released:
            return
        slot.released = True
        for key in slot.keys:
            try:
                await self._limiter.release(key, slot.holder)
            except Unavailable:
                # The lease expires by itself; the slot comes back then.
                log.warning("could not release a stream slot (rate limiter down)")


def _headers(counters: list[_Counted], remaining: tuple[int, ...], retry: float) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for the tightest request and token limits."""
    headers: dict[str, str] = {}
    reset = _reset(WINDOW_S - time.time() % WINDOW_S if retry <= 0 else retry)
    for unit in ("requests", "tokens"):
        pairs = [
            (c.limit.limit, left)
            for c, left in zip(counters, remaining, strict=True)
            if c.name.endswith(unit)
        ]
        if pairs:
            limit, left = min(pairs, key=lambda p: p[1])
            headers[f"x-ratelimit-limit-{unit}"] = str(limit)
            headers[f"x-ratelimit-remaining-{unit}"] = str(left)
            headers[f"x-ratelimit-reset-{unit}"] = reset
    return headers
