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
from axon.auth.authenticator import Authenticator
from axon.config import Settings
from axon.core.errors import ConfigError
from axon.gateway import errors
from axon.gateway import openapi as openapi_document
from axon.gateway.auth import Authenticate
from axon.gateway.drain import Drain
from axon.gateway.headers import SecurityHeaders
from axon.gateway.middleware import BodyLimit, HostCheck, Metrics, is_loopback
from axon.gateway.proxy import Upstreams
from axon.gateway.ratelimit import RateLimit
from axon.gateway.routes import admin, openai, ops, sessions
from axon.gateway.services import Check, Services
from axon.ratelimit.base import RateLimiter

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


@asynccontextmanager
async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
    yield


def check_exposure(settings: Settings) -> None:
    """Refuse to serve anonymous callers on anything but loopback unless told to: a
    forgotten setting must not leave every conversation open to the network."""
    auth = settings.auth
    if is_loopback(settings.server.host) or auth.required or auth.allow_anonymous:
        return
    raise ConfigError(
        f"refusing to serve on {settings.server.host} without authentication: set "
        "AXON_AUTH__REQUIRED=true (and create keys with `axon keys create`), or "
        "AXON_AUTH__ALLOW_ANONYMOUS=true to serve anyone who can reach this address"
    )


def _base(
    title: str, checks: dict[str, Check], lifespan: Lifespan | None, *, openapi: bool = True
) -> FastAPI:
    app = FastAPI(
        title=title,
        version=__version__,
        description="OpenAI-compatible chat API with server-side sessions.",
        lifespan=lifespan or _no_lifespan,
        openapi_url="/openapi.json" if openapi else None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.checks = checks
    # Set when the server is told to stop (see cli/server.py).
    app.state.drain = Drain()
    errors.install(app)
    openapi_document.install(app)
    return app


def _edge(
    app: FastAPI,
    settings: Settings,
    authenticator: Authenticator,
    limiter: RateLimiter | None,
) -> None:
    """What faces clients. Starlette runs the last added middleware first, so this reads
    from the inside out: the address limit sees the authenticated caller, and every
    refusal (413, 401, 429) still passes through CORS and the security headers."""
    limits = settings.limits
    if limiter is not None:
        app.add_middleware(
            RateLimit,
            limiter=limiter,
            per_minute=limits.requests_per_minute,
            trusted_proxies=limits.trusted_proxies,
            fail_open=limits.on_backend_failure == "open",
        )
    app.add_middleware(Authenticate, authenticator=authenticator)
    app.add_middleware(
        BodyLimit, max_bytes=settings.server.max_body_bytes, timeout_s=limits.body_timeout_s
    )
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "x-ratelimit-remaining-requests"],
        )
    app.add_middleware(
        HostCheck,
        allowed=settings.server.allowed_hosts,
        loopback_only=is_loopback(settings.server.host),
    )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Metrics)


def create_app(
    services: Services, lifespan: Lifespan | None = None, *, edge: bool = True
) -> FastAPI:
    """The API around ``services``; ``lifespan`` starts and stops what they need. With
    ``edge`` false (a session manager behind gateways) the per-address limit is left to
    the gateways; callers are still authenticated here, so a tenant is never taken from
    anything a gateway or client forwards."""
    check_exposure(services.settings)
    app = _base("Axon", services.checks, lifespan)
    app.state.services = services
    app.include_router(openai.router)
    app.include_router(sessions.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    app.include_router(ops.web)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    _edge(app, services.settings, services.authenticator, services.limiter if edge else None)
    return app


def create_gateway_app(
    settings: Settings,
    upstreams: Upstreams,
    authenticator: Authenticator,
    limiter: RateLimiter,
    lifespan: Lifespan | None,
) -> FastAPI:
    """The gateway in front of separate session managers: edge concerns here (a bad
    credential never reaches a session manager), the API forwarded, the web page and
    operations endpoints served locally."""
    check_exposure(settings)
    app = _base("Axon gateway", {"session_managers": upstreams.ready}, lifespan, openapi=False)

    async def forward(request: Request) -> StreamingResponse:
        return await upstreams.forward(request)

    methods = ["GET", "POST", "DELETE", "PUT", "PATCH"]
    app.add_api_route("/v1/{path:path}", forward, methods=methods, include_in_schema=False)
    app.add_api_route("/admin/{path:path}", forward, methods=methods, include_in_schema=False)
    app.add_api_route("/openapi.json", forward, methods=["GET"], include_in_schema=False)
    app.include_router(ops.router)
    app.include_router(ops.web)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    _edge(app, settings, authenticator, limiter)
    return app


def create_ops_app(checks: dict[str, Check], lifespan: Lifespan | None) -> FastAPI:
    """``/healthz``, ``/readyz`` and ``/metrics`` only (a worker's HTTP surface)."""
    app = _base("Axon worker", checks, lifespan, openapi=False)
    app.include_router(ops.router)
    app.add_middleware(Metrics)
    return app
