"""Shared by the scripts that print a table generated from the code (settings, metrics):
print it, or with ``--write FILE`` replace the table of the same header in that file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def main(table: Callable[[], str]) -> None:
    text = table()
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        path = Path(sys.argv[2])
        doc = path.read_text()
        header = text.split("\n", 1)[0]
        start = doc.index(header)
        end = doc.index("\n\n", start) + 1
        path.write_text(doc[:start] + text + doc[end:])
    else:
        print(text, end="")
