"""The gateway's forwarding to session managers: a keep-alive pool over several upstream
URLs, streamed both ways, failing over to the next upstream when one cannot be reached.

A request is retried on another upstream only when the connection could not be made (so
nothing reached the first one); once any byte was sent, a failure is the client's answer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from fastapi import Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from axon.config import GatewaySettings
from axon.core.errors import InvalidRequest, Overloaded, ShuttingDown, Unavailable
from axon.gateway import sse
from axon.gateway.drain import Drain
from axon.observability import metrics

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
    # Set below from the connection: a client's own value must not pass as the gateway's.
    "x-forwarded-for",
}


_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def check_path(raw_path: bytes) -> None:
    """Refuse paths a proxy or client library would rewrite before they reach the session
    manager (``/v1/x/../chat/completions``, ``//``, encoded ``/`` or ``.``): what the edge
    checks and limits must be the route the request really reaches."""
    path = raw_path.split(b"?", 1)[0].decode("latin-1")
    lowered = path.lower()
    if "//" in path or "%2f" in lowered or "%2e" in lowered or "%5c" in lowered or "\\" in path:
        raise InvalidRequest("the request path is not in normal form", param="path")
    if _DOT_SEGMENT.search(path):
        raise InvalidRequest("the request path is not in normal form", param="path")


def _may_stream(method: str, path: str) -> bool:
    return (method == "POST" and path.endswith(("/messages", "/chat/completions"))) or (
        method == "GET" and path.endswith("/stream")
    )


@dataclass
class _Pool:
    """A connection pool and the number of requests it may carry at once. A request past
    that is refused at once: queued inside the HTTP client's pool, every waiting request
    costs work on every pool event, and a burst of thousands stalls the event loop for
    minutes (probes and all)."""

    client: httpx.AsyncClient
    slots: asyncio.Semaphore


class Upstreams:
    """Round-robin over session-manager URLs. Two connection pools: one for requests
    that may stream for minutes, one for everything else, so that held-open streams can
    never starve short requests (listings, cancels) of connections; readiness probes have
    a small client of their own. asyncio sets TCP_NODELAY on every TCP connection, so
    small SSE writes are not delayed."""

    def __init__(self, settings: GatewaySettings) -> None:
        if not settings.upstreams:
            raise ValueError("no upstream session managers configured")
        self.urls = [u.rstrip("/") for u in settings.upstreams]
        self._next = itertools.cycle(range(len(self.urls)))
        self.size = settings.upstream_pool_size
        self.client = self._pool(settings, self.size)
        self.streams = self._pool(settings, self.size)
        self._probes = self._client(settings, 4)

    @staticmethod
    def _client(settings: GatewaySettings, size: int) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.upstream_connect_timeout_s,
                read=None,
                write=30.0,
                pool=settings.upstream_connect_timeout_s,
            ),
            # Idle connections beyond a few dozen only cost descriptors.
            limits=httpx.Limits(max_connections=size, max_keepalive_connections=min(size, 32)),
        )

    def _pool(self, settings: GatewaySettings, size: int) -> _Pool:
        return _Pool(self._client(settings, size), asyncio.Semaphore(size))

    async def forward(self, request: Request) -> StreamingResponse:
        check_path(request.scope.get("raw_path") or request.url.path.encode())
        pool = self.streams if _may_stream(request.method, request.url.path) else self.client
        if pool.slots.locked():
            metrics.SHED.labels("gateway_connections").inc()
            raise Overloaded(
                f"this gateway is carrying its limit of {self.size} requests; retry shortly",
                headers={"Retry-After": "1"},
            )
        await pool.slots.acquire()
        try:
            response = await self._send(pool.client, request)
        except BaseException:
            pool.slots.release()
            raise

        async def done() -> None:
            try:
                await response.aclose()
            finally:
                pool.slots.release()

        body = response.aiter_raw()
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            body = proxied_events(body, request.app.state.drain)
        return StreamingResponse(
            body,
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _DROP},
            background=BackgroundTask(done),
        )

    async def _send(self, client: httpx.AsyncClient, request: Request) -> httpx.Response:
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP]
        client_ip = request.client.host if request.client else ""
        headers.append(("x-forwarded-for", client_ip))
        path = request.url.path
        query = request.url.query
        start = next(self._next)
        for i in range(len(self.urls)):
            base = self.urls[(start + i) % len(self.urls)]
            upstream = client.build_request(
                request.method,
                f"{base}{path}" + (f"?{query}" if query else ""),
                headers=headers,
                content=body,
            )
            try:
                return await client.send(upstream, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                log.warning(
                    "session manager unreachable; trying the next",
                    extra={"upstream": base, "error": type(exc).__name__},
                )
        raise Unavailable("no session manager could be reached")

    async def ready(self) -> None:
        """Ready when at least one upstream is ready."""
        for base in self.urls:
            try:
                r = await self._probes.get(f"{base}/readyz", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                continue
        raise Unavailable("no session manager is ready")

    async def close(self) -> None:
        for client in (self.client.client, self.streams.client, self._probes):
            await client.aclose()


async def proxied_events(chunks: AsyncIterator[bytes], drain: Drain) -> AsyncIterator[bytes]:
    """An upstream's SSE bytes, until this gateway drains: then the stream ends at the next
    event boundary (a chunk may end mid-event: never cut one in two) with a re-attach
    event. Upstream keep-alives bound how long an idle stream takes to notice. An upstream
    lost mid-stream (its session manager died) ends it with a re-attach event too, when
    the cut falls between events (otherwise the client sees a drop, which means the same)."""
    boundary = True
    with metrics.OPEN_STREAMS.track_inprogress():
        try:
            async for chunk in chunks:
                yield chunk
                boundary = chunk.endswith(b"\n\n")
                if drain.draining and boundary:
                    closing = ShuttingDown("this gateway is shutting down")
                    yield sse.error_frame(closing, reattach=True)
                    return
        except httpx.HTTPError:
            if boundary:
                lost = Unavailable("the session manager relaying this reply was lost")
                yield sse.error_frame(lost, reattach=True)
