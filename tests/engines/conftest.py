"""Fixtures for engine tests: the real bundled model, loaded once per module."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from axon.core.errors import ConfigError
from axon.models.gguf import default_model_path
from axon.worker.engines.llamacpp import LlamaCppEngine
from support.services import missing


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled GGUF; both packages are core dependencies, so only a local checkout
    without them skips, and CI fails."""
    try:
        import llama_cpp  # noqa: F401

        return default_model_path()
    except (ImportError, ConfigError) as exc:
        missing(f"the bundled model cannot run here: {exc}")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(
        "smollm2", model_path, context_window=2048, threads=0, default_max_tokens=64
    )
    await engine.start()
    yield engine
    await engine.close()
