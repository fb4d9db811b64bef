"""Run an ASGI app with uvicorn, and compose the embedded all-in-one process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from axon.cli import build
from axon.config import Settings
from axon.gateway.app import create_app
from axon.gateway.services import Services
from axon.worker.engines.base import Engine

log = logging.getLogger(__name__)


async def serve_http(app: FastAPI, settings: Settings) -> None:
    config = uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        # Streams may run for minutes; give them a grace period, then let clients resume.
        timeout_graceful_shutdown=10,
        timeout_keep_alive=30,
    )
    await uvicorn.Server(config).serve()


def announce(settings: Settings, role: str) -> None:
    url = f"http://{settings.server.host}:{settings.server.port}"
    # Printed (not only logged) so that a person and a launcher both find the address.
    print(f"axon {role} ready at {url}", file=sys.stderr, flush=True)


async def embedded_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    """Every role in one app on the embedded backends. The engine is loaded, and the
    worker started, by the app's lifespan."""
    backends = build.Backends(settings)
    engine = engine or build.engine(settings)
    manager = await build.session_manager(
        backends, migrate=True, models={engine.model: build.model_info(settings.engine, engine)}
    )
    worker = build.worker(settings, engine, manager.queue, manager.streams)
    services = Services(
        settings=settings,
        manager=manager,
        limiter=backends.limiter(),
        checks={
            "model": build.model_loaded(engine),
            "store": manager.store.ping,
            "queue": manager.queue.ping,
        },
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await worker.start()
        consumer = asyncio.create_task(manager.consume_completions())
        announce(settings, "serve")
        try:
            yield
        finally:
            await worker.stop()
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
            await engine.close()
            await backends.close()

    return create_app(services, lifespan)


async def serve_embedded(settings: Settings) -> None:
    """``axon serve``."""
    await serve_http(await embedded_app(settings), settings)
