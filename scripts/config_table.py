"""Print the README's configuration table from the settings' own descriptions."""

from __future__ import annotations

import doc_table  # the scripts folder: run as `python scripts/...`
from pydantic import BaseModel

from axon.config import Settings


def rows(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += rows(annotation, f"{prefix}{name.upper()}__")
            continue
        if info.default_factory is not None and name == "data_dir":
            default = "`$XDG_DATA_HOME/axon` (`~/.local/share/axon`)"
        elif info.default_factory is not None:
            default = f"`{info.default_factory()}`"  # type: ignore[call-arg]
        else:
            default = f"`{info.default}`"
        out.append((f"`{prefix}{name.upper()}`", default, info.description or ""))
    return out


def table() -> str:
    lines = ["| Environment variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| {env} | {default} | {text} |" for env, default, text in rows(Settings, "AXON_")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    doc_table.main(table)
