"""Settings: defaults, ``AXON_*`` environment variables and the TOML config file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from axon.config import DEFAULT_MODEL, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``AXON_*`` variable from the caller's shell, and a data home inside tmp_path."""
    for name in list(os.environ):
        if name.startswith("AXON_"):
            monkeypatch.delenv(name)
    data_home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(data_home))
    monkeypatch.chdir(tmp_path)  # no stray .env or config in the working directory
    return data_home


def write_config(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "axon.toml"
    path.write_text(text)
    monkeypatch.setenv("AXON_CONFIG_FILE", str(path))
    return path


def test_defaults_run_everything_embedded(clean_env: Path) -> None:
    settings = Settings()

    assert settings.server.host == "127.0.0.1"
    assert settings.server.port == 8000
    assert settings.engine.kind == "llamacpp"
    assert settings.engine.model == DEFAULT_MODEL
    assert settings.engine.capacity == 4
    assert settings.queue.delivery_limit == 3
    assert settings.stream.batch_max_tokens == 16
    assert settings.backends.queue == "memory"
    assert settings.backends.streams == "memory"
    assert settings.store.url is None
    assert settings.data_dir == clean_env / "axon"


def test_environment_variables_set_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXON_ENGINE__KIND", "fake")
    monkeypatch.setenv("AXON_SERVER__PORT", "9123")
    monkeypatch.setenv("AXON_BACKENDS__QUEUE", "rabbitmq")

    settings = Settings()

    assert settings.engine.kind == "fake"
    assert settings.server.port == 9123
    assert settings.backends.queue == "rabbitmq"
    # Fields the environment does not name keep their defaults.
    assert settings.engine.model == DEFAULT_MODEL
    assert settings.server.host == "127.0.0.1"


def test_an_invalid_value_is_refused_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXON_ENGINE__KIND", "gpt-17")

    with pytest.raises(ValidationError, match=r"engine\.kind"):
        Settings()


def test_a_config_file_sets_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_config(
        tmp_path,
        """
service = "axon-staging"

[server]
host = "0.0.0.0"
port = 9000

[engine]
kind = "fake"
capacity = 8

[queue]
delivery_limit = 5
""",
        monkeypatch,
    )

    settings = Settings()

    assert settings.service == "axon-staging"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == 9000
    assert settings.engine.kind == "fake"
    assert settings.engine.capacity == 8
    assert settings.queue.delivery_limit == 5
    assert settings.engine.model == DEFAULT_MODEL


def test_the_environment_overrides_the_config_file_field_by_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path,
        """
[server]
host = "0.0.0.0"
port = 9000
""",
        monkeypatch,
    )
    monkeypatch.setenv("AXON_SERVER__PORT", "9500")

    settings = Settings()

    assert settings.server.port == 9500
    assert settings.server.host == "0.0.0.0"


def test_keyword_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXON_SERVICE", "from-env")

    assert Settings(service="from-code").service == "from-code"


def test_the_store_defaults_to_a_sqlite_file_in_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AXON_DATA_DIR", str(tmp_path / "data"))

    settings = Settings()

    assert settings.data_dir == tmp_path / "data"
    assert settings.store_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'axon.db'}"


def test_the_default_data_dir_follows_xdg_data_home(clean_env: Path) -> None:
    assert Settings().store_url == f"sqlite+aiosqlite:///{clean_env / 'axon' / 'axon.db'}"


def test_an_explicit_store_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+asyncpg://axon@db.internal:5432/axon"
    monkeypatch.setenv("AXON_STORE__URL", url)

    assert Settings().store_url == url
