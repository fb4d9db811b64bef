"""The distributed roles, one per process: ``axon gateway``, ``axon session-manager`` and
``axon worker``. They share PostgreSQL, Redis and RabbitMQ, so any replica of a role can
stand in for any other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from axon.cli import build
from axon.cli.run import announce, bounded, serve_http
from axon.config import Settings
from axon.gateway.app import create_app, create_gateway_app, create_ops_app
from axon.gateway.proxy import Upstreams
from axon.gateway.services import Check
from axon.observability import tracing


async def session_manager_app(settings: Settings, *, edge: bool) -> FastAPI:
    """The API with a session manager inside: ``axon session-manager`` (behind gateways,
    ``edge=False``) or ``axon gateway`` without upstreams (co-located, ``edge=True``)."""
    backends = build.Backends(settings)
    manager = await build.session_manager(
        backends, migrate=False, models=build.served_models(settings)
    )
    services = await build.services(backends, manager, manager.checks())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loops = [
            asyncio.create_task(manager.consume_completions()),
            asyncio.create_task(manager.sweep_outbox()),
            asyncio.create_task(manager.report_queues()),
        ]
        announce(settings, "session-manager" if not edge else "gateway", settings.served_models)
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
            await bounded(asyncio.gather(*loops, return_exceptions=True), "background loops")
            await bounded(backends.close(), "closing backends")

    app = create_app(services, lifespan, edge=edge)
    tracing.instrument_app(app)
    return app


async def gateway_app(settings: Settings) -> FastAPI:
    if not settings.gateway.upstreams:
        return await session_manager_app(settings, edge=True)
    backends = build.Backends(settings)
    upstreams = Upstreams(settings.gateway)
    authenticator = await backends.authenticator()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        announce(settings, "gateway", [])
        try:
            yield
        finally:
            await upstreams.close()
            await bounded(backends.close(), "closing backends")

    app = create_gateway_app(settings, upstreams, authenticator, backends.limiter(), lifespan)
    tracing.instrument_app(app)
    return app


async def run_worker(settings: Settings) -> None:
    """Consume jobs until SIGTERM, then stop taking new ones and hand back what is left.
    Serves ``/healthz``, ``/readyz`` and ``/metrics`` on the configured port."""
    backends = build.Backends(settings)
    engine = build.engine(settings)
    queue = await backends.queue()
    streams = backends.streams()
    worker = build.worker(settings, engine, queue, streams)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await worker.start()
        announce(settings, "worker", [settings.engine])
        try:
            yield
        finally:
            await worker.stop()
            await engine.close()
            await bounded(backends.close(), "closing backends")

    checks: dict[str, Check] = {
        "model": build.model_loaded(engine),
        "queue": queue.ping,
        "streams": streams.ping,
        "worker": worker.ready,
    }
    await serve_http(create_ops_app(checks, lifespan), settings)
