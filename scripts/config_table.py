"""Print the README's configuration table from the settings' own descriptions."""

from __future__ import annotations

import sys
from pathlib import Path

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


def main() -> None:
    """Print the table, or with ``--write README.md`` replace the one in that file."""
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        text = path.read_text()
        start = text.index("| Environment variable |")
        end = text.index("\n\n", start) + 1
        path.write_text(text[:start] + table() + text[end:])
    else:
        print(table(), end="")


if __name__ == "__main__":
    main()
