"""Parse server-sent events from a response body."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx


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


def read_then_reattach(
    http: httpx.Client, post_url: str, reattach_base: str, body: dict[str, Any]
) -> tuple[list[Event], list[Event]]:
    """Start a streamed turn at ``post_url``, drop the connection after three token events,
    then re-attach at ``reattach_base`` (a base URL) with ``Last-Event-ID``. Returns the
    token events seen before the drop and every event after the re-attach."""
    seen = ""
    with http.stream("POST", post_url, json=body) as r:
        for text in r.iter_text():
            seen += text
            if seen.count("event: token") >= 3 and seen.endswith("\n\n"):
                break
    head = parse(seen)
    reply_id = head[0].data["reply_id"]
    session_id = head[0].data["user_message"]["session_id"]
    tokens = [e for e in head if e.event == "token"]
    rest = parse(
        http.get(
            f"{reattach_base}/v1/sessions/{session_id}/messages/{reply_id}/stream",
            headers={"Last-Event-ID": tokens[-1].id or ""},
        ).text
    )
    return tokens, rest
