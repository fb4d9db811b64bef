"""The bundled model for tests that run it."""

from __future__ import annotations

from pathlib import Path

from axon.core.errors import ConfigError
from support.services import missing


def bundled_model() -> Path:
    """The bundled GGUF. Both packages are core dependencies, so only a local checkout
    without them skips, and CI fails."""
    try:
        import llama_cpp  # noqa: F401

        from axon.models.gguf import default_model_path

        return default_model_path()
    except (ImportError, ConfigError) as exc:
        missing(f"the bundled model cannot run here: {exc}")
