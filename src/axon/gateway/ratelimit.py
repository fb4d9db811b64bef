"""Rate limiting of chat requests at the edge, with counts shared through the limiter's
backend (Redis in production) so that every gateway replica sees the same totals."""

from __future__ import annotations

import json
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from axon.core.errors import RateLimited
from axon.observability import metrics
from axon.ratelimit.base import RateLimiter


def _is_chat(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] == "POST" and (
        path == "/v1/chat/completions"
        or (path.startswith("/v1/sessions/") and path.endswith("/messages"))
    )


class RateLimit:
    """Requests per minute per client address on the chat endpoints (429 beyond)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, per_minute: int) -> None:
        self.app = app
        self.limiter = limiter
        self.per_minute = per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.per_minute <= 0 or not _is_chat(scope):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        key = f"rpm:ip:{client[0] if client else 'unknown'}"
        decision = await self.limiter.hit(key, self.per_minute, 60.0)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        error = RateLimited(
            f"more than {self.per_minute} chat requests per minute; retry after "
            f"{math.ceil(decision.retry_after_s)} s"
        )
        metrics.ERRORS.labels(error.code).inc()
        await send(
            {
                "type": "http.response.start",
                "status": error.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"retry-after", str(math.ceil(decision.retry_after_s)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(error.to_body()).encode()})
