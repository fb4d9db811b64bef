"""End-to-end fixtures: a real ``axon serve`` process with the real bundled model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import AxonProcess

#: Short replies keep the suite quick on two cores; tests that need more ask for it.
SERVER_ENV = {"AXON_ENGINE__DEFAULT_MAX_TOKENS": "48", "AXON_ENGINE__CONTEXT_WINDOW": "2048"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AxonProcess]:
    data_dir: Path = tmp_path_factory.mktemp("axon-e2e")
    process = AxonProcess(["serve"], data_dir=data_dir, env=SERVER_ENV).start()
    try:
        yield process
    finally:
        process.stop()
