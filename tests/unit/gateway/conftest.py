"""The whole embedded app in-process (fake engine, SQLite in a temp folder), driven over
ASGI by an httpx client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from axon.cli.run import embedded_app
from axon.config import EngineSettings, Settings
from axon.gateway.services import Services
from axon.worker.engines.fake import FakeEngine


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine("fake-model", context_window=512, reply_tokens=12, default_max_tokens=64)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        engine=EngineSettings(
            kind="fake", model="fake-model", context_window=512, default_max_tokens=64
        ),
    )


@pytest.fixture
async def app(settings: Settings, engine: FakeEngine) -> AsyncIterator[FastAPI]:
    application = await embedded_app(settings, engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def services(app: FastAPI) -> Services:
    s: Services = app.state.services
    return s


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c
