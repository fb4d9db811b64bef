"""Fixtures for engine tests: the real bundled model, loaded once per module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from axon.worker.engines.llamacpp import LlamaCppEngine
from support.model import bundled_model


@pytest.fixture(scope="session")
def model_path() -> Path:
    return bundled_model()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        "smollm2", model_path, context_window=2048, threads=0, default_max_tokens=64
    )
    await engine.start()
    yield engine
    await engine.close()
