"""The gateway's forwarding to session managers: a keep-alive pool over several upstream
URLs, streamed both ways, failing over to the next upstream when one cannot be reached.

A request is retried on another upstream only when the connection could not be made (so
nothing reached the first one); once any byte was sent, a failure is the client's answer.
"""

from __future__ import annotations

import itertools
import logging

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from axon.config import GatewaySettings
from axon.core.errors import Unavailable

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 §7.6.1) and those the server recomputes.
_DROP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


class Upstreams:
    """Round-robin over session-manager URLs with one shared connection pool. asyncio
    sets TCP_NODELAY on every TCP connection, so small SSE writes are not delayed."""

    def __init__(self, settings: GatewaySettings) -> None:
        if not settings.upstreams:
            raise ValueError("no upstream session managers configured")
        self.urls = [u.rstrip("/") for u in settings.upstreams]
        self._next = itertools.cycle(range(len(self.urls)))
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout_s,
                read=None,
                write=30.0,
                pool=settings.upstream_connect_timeout_s,
            ),
            limits=httpx.Limits(
                max_connections=settings.upstream_pool_size,
                max_keepalive_connections=settings.upstream_pool_size,
            ),
        )

    async def forward(self, request: Request) -> StreamingResponse:
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
        client_ip = request.client.host if request.client else ""
        headers.append(("x-forwarded-for", client_ip))
        path = request.url.path
        query = request.url.query
        start = next(self._next)
        for i in range(len(self.urls)):
            base = self.urls[(start + i) % len(self.urls)]
            upstream = self.client.build_request(
                request.method,
                f"{base}{path}" + (f"?{query}" if query else ""),
                headers=headers,
                content=body,
            )
            try:
                response = await self.client.send(upstream, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                log.warning(
                    "session manager unreachable; trying the next",
                    extra={"upstream": base, "error": type(exc).__name__},
                )
                continue
            return StreamingResponse(
                response.aiter_raw(),
                status_code=response.status_code,
                headers={k: v for k, v in response.headers.items() if k.lower() not in _DROP},
                background=BackgroundTask(response.aclose),
            )
        raise Unavailable("no session manager could be reached")

    async def ready(self) -> None:
        """Ready when at least one upstream is ready."""
        for base in self.urls:
            try:
                r = await self.client.get(f"{base}/readyz", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                continue
        raise Unavailable("no session manager is ready")

    async def close(self) -> None:
        await self.client.aclose()
