"""ASGI application factories: the API (session manager, with or without the gateway's
edge concerns), the forwarding gateway, and the bare operations app of a worker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.responses import StreamingResponse

from axon import __version__
from axon.config import Settings
from axon.gateway import errors
from axon.gateway.middleware import BodyLimit, Metrics
from axon.gateway.proxy import Upstreams
from axon.gateway.ratelimit import RateLimit
from axon.gateway.routes import openai, ops, sessions
from axon.gateway.services import Check, Services
from axon.ratelimit.base import RateLimiter

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield


def _base(
    title: str, checks: dict[str, Check], lifespan: Lifespan | None, *, openapi: bool = True
) -> FastAPI:
    app = FastAPI(
        title=title,
        version=__version__,
        description="OpenAI-compatible chat API with server-side sessions.",
        lifespan=lifespan or _no_lifespan,
        openapi_url="/openapi.json" if openapi else None,
        docs_url="/docs" if openapi else None,
        redoc_url=None,
    )
    app.state.checks = checks
    errors.install(app)
    return app


def _edge(app: FastAPI, settings: Settings, limiter: RateLimiter | None) -> None:
    """What faces clients: CORS, body limit, rate limit, request metrics."""
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    if limiter is not None:
        app.add_middleware(
            RateLimit, limiter=limiter, per_minute=settings.limits.requests_per_minute
        )
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(Metrics)


def create_app(
    services: Services, lifespan: Lifespan | None = None, *, edge: bool = True
) -> FastAPI:
    """The API around ``services``; ``lifespan`` starts and stops what they need. With
    ``edge`` false (a session manager behind gateways) no rate limit is applied here."""
    app = _base("Axon", services.checks, lifespan)
    app.state.services = services
    app.include_router(openai.router)
    app.include_router(sessions.router)
    app.include_router(ops.router)
    app.include_router(ops.web)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    _edge(app, services.settings, services.limiter if edge else None)
    return app


def create_gateway_app(
    settings: Settings, upstreams: Upstreams, limiter: RateLimiter, lifespan: Lifespan | None
) -> FastAPI:
    """The gateway in front of separate session managers: edge concerns here, the API
    forwarded, the web page and operations endpoints served locally."""
    app = _base("Axon gateway", {"session_managers": upstreams.ready}, lifespan, openapi=False)

    async def forward(request: Request) -> StreamingResponse:
        return await upstreams.forward(request)

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
    app.add_api_route("/v1/{path:path}", forward, methods=methods, include_in_schema=False)
    app.add_api_route("/openapi.json", forward, methods=["GET"], include_in_schema=False)
    app.include_router(ops.router)
    app.include_router(ops.web)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    _edge(app, settings, limiter)
    return app


def create_ops_app(checks: dict[str, Check], lifespan: Lifespan | None) -> FastAPI:
    """``/healthz``, ``/readyz`` and ``/metrics`` only (a worker's HTTP surface)."""
    app = _base("Axon worker", checks, lifespan, openapi=False)
    app.include_router(ops.router)
    app.add_middleware(Metrics)
    return app
