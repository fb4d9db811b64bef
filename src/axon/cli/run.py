"""Run an ASGI app with uvicorn, and compose the embedded all-in-one process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from axon import __version__
from axon.cli import build
from axon.cli.server import serve_http as serve_http  # Re-exported: the roles import it.
from axon.config import EngineSettings, Settings
from axon.gateway.app import create_app
from axon.observability import metrics, tracing
from axon.worker.engines.base import Engine

log = logging.getLogger(__name__)


#: Longest a role's shutdown may take once its server has stopped: past it the process
#: exits anyway (whatever was unfinished is another replica's, or the broker's, again).
SHUTDOWN_S = 20.0


async def bounded(work: Awaitable[object], what: str) -> None:
    """Await ``work`` for at most ``SHUTDOWN_S``: a shutdown step that hangs (a datastore
    gone quiet) must not keep a stopping process alive until something kills it."""
    try:
        async with asyncio.timeout(SHUTDOWN_S):
            await work
    except TimeoutError:
        log.warning("shutdown step did not finish in time; exiting anyway", extra={"step": what})


def announce(settings: Settings, role: str, models: list[EngineSettings]) -> None:
    """Say the process is serving: ``axon_build_info`` (one series per model it serves, so
    dashboards can list the models), and a line for people and launchers."""
    served: list[tuple[str, str]] = [(m.kind, m.model) for m in models] or [("", "")]
    for kind, name in served:
        metrics.BUILD_INFO.labels(__version__, role, kind, name).set(1)
    metrics.declare([m.model for m in models])
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
    queue = await backends.queue()
    worker = build.worker(settings, engine, queue, backends.streams())
    checks = {"model": build.model_loaded(engine), "worker": worker.ready, **manager.checks()}
    services = await build.services(backends, manager, checks)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        await worker.start()
        loops = [
            asyncio.create_task(manager.consume_completions()),
            asyncio.create_task(manager.sweep_outbox()),
            asyncio.create_task(manager.report_queues()),
        ]
        announce(settings, "serve", [settings.engine])
        try:
            yield
        finally:
            await worker.stop()
            for loop in loops:
                loop.cancel()
            await bounded(asyncio.gather(*loops, return_exceptions=True), "background loops")
            await engine.close()
            await bounded(backends.close(), "closing backends")

    app = create_app(services, lifespan)
    tracing.instrument_app(app)
    return app


async def serve_embedded(settings: Settings) -> None:
    """``axon serve``."""
    await serve_http(await embedded_app(settings), settings)
