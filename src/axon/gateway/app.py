"""The ASGI application factory of the HTTP API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from axon import __version__
from axon.gateway import errors
from axon.gateway.middleware import BodyLimit, Metrics
from axon.gateway.routes import openai, ops, sessions
from axon.gateway.services import Services

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(services: Services, lifespan: Lifespan | None = None) -> FastAPI:
    """Build the API around ``services``; ``lifespan`` starts and stops what they need."""

    @asynccontextmanager
    async def _no_lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield

    app = FastAPI(
        title="Axon",
        version=__version__,
        description="OpenAI-compatible chat API with server-side sessions.",
        lifespan=lifespan or _no_lifespan,
    )
    app.state.services = services
    errors.install(app)
    app.include_router(openai.router)
    app.include_router(sessions.router)
    app.include_router(ops.router)
    app.mount("/static", StaticFiles(directory=ops.STATIC), name="static")
    settings = services.settings
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_body_bytes)
    app.add_middleware(Metrics)
    return app
