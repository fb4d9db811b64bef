"""Refusing names that are no setting: an ``AXON_*`` variable or a config-file key that
matches nothing (a misspelled ``AXON_AUTH__REQUIRD=true``) stops the process with the
closest real name, instead of being silently ignored."""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from axon.core.errors import ConfigError

#: ``AXON_*`` variables that are not settings: read by the client, the config loader, the
#: scripts and the test suite.
_NOT_SETTINGS = {"AXON_CONFIG_FILE", "AXON_API_KEY", "AXON_VLLM_VENV"}
_NOT_SETTINGS_PREFIXES = ("AXON_TEST_",)


def _known(model: type[BaseModel], prefix: str) -> dict[str, bool]:
    """Every setting's variable name, mapped to whether it is a leaf (a value)."""
    names: dict[str, bool] = {}
    for name, info in model.model_fields.items():
        full = f"{prefix}{name.upper()}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names[full] = False
            names.update(_known(annotation, f"{full}__"))
        else:
            names[full] = True
    return names


def _unknown(names: list[str], known: dict[str, bool], source: str) -> None:
    for name in names:
        if name in known:
            continue
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"unknown setting {name} in {source}{hint}")


def _toml_names(data: dict[str, object], prefix: str, known: dict[str, bool]) -> list[str]:
    names: list[str] = []
    for key, value in data.items():
        full = f"{prefix}{key.upper()}"
        if isinstance(value, dict) and known.get(full) is False:
            names += _toml_names(value, f"{full}__", known)
        else:
            names.append(full)
    return names


def check_unknown(
    settings: type[BaseModel], environ: Mapping[str, str], config_file: Path | None
) -> None:
    """Refuse ``AXON_*`` variables and config-file keys that name no setting: a misspelled
    ``AXON_AUTH__REQUIRD=true`` must stop the server, not leave it open."""
    known = _known(settings, "AXON_")
    env = [
        name
        for name in environ
        if name.upper().startswith("AXON_")
        and name.upper() not in _NOT_SETTINGS
        and not name.upper().startswith(_NOT_SETTINGS_PREFIXES)
    ]
    _unknown([n.upper() for n in env], known, "the environment")
    if config_file is not None and config_file.exists():
        with config_file.open("rb") as f:
            data = tomllib.load(f)
        names = _toml_names(data, "AXON_", known)
        try:
            _unknown(names, known, str(config_file))
        except ConfigError as exc:
            # Speak the file's language: dotted keys, not variable names.
            raise ConfigError(_as_toml(exc.message)) from None


def _as_toml(message: str) -> str:
    def key(name: str) -> str:
        return name.removeprefix("AXON_").lower().replace("__", ".")

    words = [
        key(w.rstrip("?;")) + ("?" if w.endswith("?") else ";" if w.endswith(";") else "")
        if w.rstrip("?;").startswith("AXON_")
        else w
        for w in message.split(" ")
    ]
    return " ".join(words)
