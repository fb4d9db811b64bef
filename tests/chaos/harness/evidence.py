"""The warnings and errors in the processes' logs, counted by message: what a failing
scenario's report shows next to the checker's findings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

_LEVELS = {"warning", "error", "critical"}


def digest(logs: dict[str, Path], limit: int = 25) -> list[str]:
    counts: Counter[tuple[str, str]] = Counter()
    example: dict[tuple[str, str], str] = {}
    for name, path in logs.items():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            key, detail = _interesting(name, line)
            if key is None:
                continue
            counts[key] += 1
            example.setdefault(key, detail)
    return [
        f"{n:>4} x {where}: {what}"
        + (f"  [{example[(where, what)]}]" if example[(where, what)] else "")
        for (where, what), n in counts.most_common(limit)
    ]


def _interesting(name: str, line: str) -> tuple[tuple[str, str] | None, str]:
    if line.startswith("=== chaos"):
        return None, ""
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if isinstance(record, dict):
        if str(record.get("level", "")).lower() not in _LEVELS:
            return None, ""
        what = f"{record.get('level')} {record.get('logger')}: {record.get('event')}"
        extra = {
            k: v
            for k, v in record.items()
            if k in ("code", "error", "action", "reason", "upstream", "exc_info", "exception")
        }
        return (name, what), json.dumps(extra, default=str)[:300] if extra else ""
    # Plain lines: tracebacks and whatever a library printed on its own.
    text = line.strip()
    if text.startswith(("Traceback", "raise ")) or "Error" in text or "error" in text:
        return (name, text[:200]), ""
    return None, ""
