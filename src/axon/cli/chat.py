"""``axon chat``: a terminal chat client over the session API."""

from __future__ import annotations

import json
import sys

import httpx


def _stream_reply(client: httpx.Client, session_id: str, content: str) -> None:
    with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"content": content, "stream": True}
    ) as response:
        if response.status_code >= 400:
            response.read()
            print(f"error: {response.json()['error']['message']}", file=sys.stderr)
            return
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
                if event == "token":
                    print(data["text"], end="", flush=True)
                elif event == "error":
                    print(f"\nerror: {data['error']['message']}", file=sys.stderr)
            elif not line:
                event = ""
    print()


def run_chat(url: str, session_id: str | None) -> int:
    """Read prompts from stdin and stream the replies; returns an exit status."""
    with httpx.Client(base_url=url, timeout=httpx.Timeout(10.0, read=None)) as client:
        try:
            if session_id is None:
                session_id = client.post("/v1/sessions", json={}).raise_for_status().json()["id"]
            else:
                client.get(f"/v1/sessions/{session_id}").raise_for_status()
        except httpx.HTTPError as exc:
            print(f"axon chat: cannot reach {url}: {exc}", file=sys.stderr)
            return 1
        print(f"session {session_id} (Ctrl-D to quit)", file=sys.stderr)
        while True:
            try:
                content = input("> ")
            except (EOFError, KeyboardInterrupt):
                print(file=sys.stderr)
                return 0
            if content.strip():
                try:
                    _stream_reply(client, session_id, content)
                except KeyboardInterrupt:
                    print("\n(interrupted)", file=sys.stderr)
