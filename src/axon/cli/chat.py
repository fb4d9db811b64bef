"""``axon chat``: a terminal chat client over the session API."""

from __future__ import annotations

import json
import sys

import httpx

NEEDS_KEY = "axon chat: the server requires an API key: pass --api-key or set AXON_API_KEY"
KEY_REFUSED = "axon chat: the API key was refused"


class Unauthorized(Exception):
    """The server answered 401: the key is missing, unknown, revoked or expired."""


def _check_auth(response: httpx.Response) -> None:
    if response.status_code == 401:
        raise Unauthorized


def _stream_reply(client: httpx.Client, session_id: str, content: str) -> None:
    with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json={"content": content, "stream": True}
    ) as response:
        _check_auth(response)
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


def _open_session(client: httpx.Client, session_id: str | None) -> str:
    if session_id is None:
        response = client.post("/v1/sessions", json={})
        _check_auth(response)
        created: str = response.raise_for_status().json()["id"]
        return created
    response = client.get(f"/v1/sessions/{session_id}")
    _check_auth(response)
    response.raise_for_status()
    return session_id


def run_chat(
    url: str,
    session_id: str | None,
    api_key: str | None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Read prompts from stdin and stream the replies; returns an exit status.

    ``api_key`` goes out as a bearer token on every request; it is never printed.
    ``transport`` replaces the network (tests).
    """
    # A key read from a file may end in a newline; an empty variable means no key.
    api_key = api_key.strip() if api_key else None
    if api_key and not (api_key.isascii() and api_key.isprintable()):
        # Checked here because httpx's own error would quote the header, key included.
        print("axon chat: the API key holds characters no key has", file=sys.stderr)
        return 1
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    refused = KEY_REFUSED if api_key else NEEDS_KEY
    with httpx.Client(
        base_url=url,
        headers=headers,
        timeout=httpx.Timeout(10.0, read=None),
        transport=transport,
    ) as client:
        try:
            session_id = _open_session(client, session_id)
        except Unauthorized:
            print(refused, file=sys.stderr)
            return 1
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
                except Unauthorized:
                    # The key was revoked or expired mid-session.
                    print(refused, file=sys.stderr)
                    return 1
