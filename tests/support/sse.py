"""Parse server-sent events from a response body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Event:
    event: str
    data: Any
    id: str | None


def parse(body: str) -> list[Event]:
    events: list[Event] = []
    for block in body.split("\n\n"):
        name, ident, data = "message", None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            raw = "\n".join(data)
            events.append(Event(name, raw if raw == "[DONE]" else json.loads(raw), ident))
    return events
