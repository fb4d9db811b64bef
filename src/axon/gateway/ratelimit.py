"""The per-address limit for anonymous callers: requests per minute per client address on
every ``POST /v1/*`` (the routes that start work), counted in the limiter's backend so every
replica sees the same totals. Callers with a key or a token are limited per key and per
tenant by the session manager instead.

The client address is the connection's peer, or, only when that peer is a configured
trusted proxy, the nearest untrusted address in ``X-Forwarded-For``: a header any client
can send must never choose the counter it is charged to.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from axon.core.errors import RateLimited, Unavailable
from axon.core.types import Principal
from axon.gateway.errors import error_response
from axon.observability import metrics
from axon.ratelimit.base import RateLimiter

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Sequence[str]) -> list[Network]:
    return [ipaddress.ip_network(e, strict=False) for e in entries]


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    peer = scope.get("client")
    address = str(peer[0]) if peer else "unknown"
    if not trusted or not _trusted(address, trusted):
        return address
    forwarded: list[str] = [
        part.strip()
        for key, value in scope["headers"]
        if key == b"x-forwarded-for"
        for part in value.decode("latin-1").split(",")
        if part.strip()
    ]
    # Walk from the nearest hop outwards: the first address not of a trusted proxy is
    # the client (anything further left was written by the client itself).
    for hop in reversed(forwarded):
        if not _trusted(hop, trusted):
            return hop
    return address


class RateLimit:
    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        per_minute: int,
        trusted_proxies: Sequence[str],
        fail_open: bool,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.per_minute = per_minute
        self.trusted = networks(trusted_proxies)
        self.fail_open = fail_open

    def _applies(self, scope: Scope) -> bool:
        if scope["type"] != "http" or self.per_minute <= 0 or scope["method"] != "POST":
            return False
        if not scope["path"].startswith("/v1/"):
            return False
        principal: Principal | None = scope.get("state", {}).get("principal")
        return principal is None or principal.anonymous

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        key = f"rpm:ip:{client_address(scope, self.trusted)}"
        try:
            decision = await self.limiter.hit(key, self.per_minute, 60.0)
        except Unavailable:
            if not self.fail_open:
                down = Unavailable(
                    "the rate limiter is unavailable; retry shortly", headers={"Retry-After": "1"}
                )
                await error_response(down)(scope, receive, send)
                return
            log.warning("rate limiter unavailable; admitting without limits (fail open)")
            await self.app(scope, receive, send)
            return
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        metrics.RATE_LIMITED.labels("address").inc()
        retry = max(1, math.ceil(decision.retry_after_s))
        log.info("request refused", extra={"reason": "rate_limit", "limit": "address"})
        error = RateLimited(
            f"more than {self.per_minute} requests per minute from this address; retry "
            f"after {retry} s",
            headers={
                "Retry-After": str(retry),
                "x-ratelimit-limit-requests": str(self.per_minute),
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": f"{retry}s",
            },
        )
        await error_response(error)(scope, receive, send)
