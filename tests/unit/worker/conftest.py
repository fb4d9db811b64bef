"""Fixtures shared by the worker tests."""

from __future__ import annotations

import pytest

from axon.streaming.memory import MemoryTokenStreams


@pytest.fixture
def streams() -> MemoryTokenStreams:
    return MemoryTokenStreams()
