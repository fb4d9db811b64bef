"""``axon chat``: a terminal chat client over the session API.

A reply whose stream drops (connection closed, network error, server restart, or an
``error`` event that says ``reattach``) keeps going on the server, so the client re-attaches
to it with ``Last-Event-ID`` and prints only what it has not printed yet.
"""

from __future__ import annotations

import enum
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

NEEDS_KEY = "axon chat: the server requires an API key: pass --api-key or set AXON_API_KEY"
KEY_REFUSED = "axon chat: the API key was refused"
LOST_BEFORE_TURN = (
    "error: the connection closed before the reply began; "
    "the message may have been stored: check the session before sending it again"
)
GAVE_UP = "error: lost the connection to the reply; it may still finish on the server"

#: Re-attach backoff: the first wait, doubling up to the cap.
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 4.0
#: Give up after this many attempts, or this long, without receiving anything new.
MAX_ATTEMPTS = 10
GIVE_UP_S = 60.0
#: Answers to a re-attach that may pass: rate limited (the dropped stream may still hold
#: its slot for a moment) or the server is restarting or overloaded.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class Unauthorized(Exception):
    """The server answered 401: the key is missing, unknown, revoked or expired."""


class Outcome(enum.Enum):
    DONE = "done"  # the final event arrived, or the reply is over after an error
    DROPPED = "dropped"  # the stream ended early: re-attach


@dataclass
class Reply:
    """One reply as far as this client has followed it."""

    reply_id: str | None = None
    last_event_id: str | None = None
    #: The text printed so far: exactly the tokens received, each once.
    shown: list[str] = field(default_factory=list)
    #: Tokens received: the re-attach loop counts progress with it (an ``error`` event
    #: asking to re-attach, again and again, is no progress).
    tokens: int = 0


def _check_auth(response: httpx.Response) -> None:
    if response.status_code == 401:
        raise Unauthorized


def _error_message(response: httpx.Response) -> str:
    response.read()
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return f"{response.status_code} {response.reason_phrase}"
    return str(message)


def _position(event_id: str) -> tuple[int, int] | None:
    """The order of an event id (``<milliseconds>-<sequence>``), None for another form."""
    ms, dash, seq = event_id.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def _is_new(event_id: str | None, last: str | None) -> bool:
    """Whether an event comes after ``last``: a re-attach that replays from earlier than
    asked (a proxy dropped the header) must not print a token twice."""
    if event_id is None or last is None:
        return True
    here, before = _position(event_id), _position(last)
    return here is None or before is None or here > before


def _events(response: httpx.Response) -> Iterator[tuple[str, str | None, Any]]:
    """The response's SSE events as (name, id, data). An event is complete only at its
    blank line, so one cut short by a dropped connection is never handed out."""
    name: str = "message"
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, event_id, json.loads("\n".join(data))
            name, event_id, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "event":
            name = value
        elif key == "id":
            event_id = value or None
        elif key == "data":
            data.append(value)


def _follow(response: httpx.Response, reply: Reply) -> Outcome:
    """Print one response's events; says whether the reply is over or must be re-attached.
    A transport error mid-body is a drop like any other."""
    try:
        for name, event_id, data in _events(response):
            if not _is_new(event_id, reply.last_event_id):
                continue
            if event_id is not None:
                reply.last_event_id = event_id
            if name == "turn":
                reply.reply_id = str(data["reply_id"])
            elif name == "token":
                reply.tokens += 1
                reply.shown.append(data["text"])
                print(data["text"], end="", flush=True)
            elif name == "done":
                _complete(reply, data)
                return Outcome.DONE
            elif name == "error":
                if data.get("reattach") is True:
                    # The server is going away or a backend failed: the reply goes on.
                    return Outcome.DROPPED
                print(f"\nerror: {data['error']['message']}", file=sys.stderr)
                return Outcome.DONE
    except httpx.TransportError:
        pass
    return Outcome.DROPPED


def _complete(reply: Reply, done: dict[str, Any]) -> None:
    """Print what the stored reply holds beyond the tokens shown. A reply that finished
    long ago is replayed as its ``done`` event alone, with no tokens before it."""
    message = done.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    shown = "".join(reply.shown)
    if isinstance(content, str) and content.startswith(shown) and len(content) > len(shown):
        rest = content[len(shown) :]
        reply.shown.append(rest)
        print(rest, end="", flush=True)


def _pause(seconds: float) -> None:
    """The wait between re-attach attempts (tests replace it)."""
    time.sleep(seconds)


def _reattach(client: httpx.Client, session_id: str, reply: Reply) -> None:
    """Follow a dropped reply to its end, backing off between attempts; gives up (with an
    error) after ``MAX_ATTEMPTS`` attempts or ``GIVE_UP_S`` seconds that brought nothing."""
    assert reply.reply_id is not None
    path = f"/v1/sessions/{session_id}/messages/{reply.reply_id}/stream"
    delay = BACKOFF_FIRST_S
    attempts = 0
    since = time.monotonic()
    while attempts < MAX_ATTEMPTS and time.monotonic() - since < GIVE_UP_S:
        _pause(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)
        attempts += 1
        before = reply.tokens
        # Without an id (no token yet) the server replays from the start: nothing of it
        # was printed, so nothing is printed twice.
        headers = {"Last-Event-ID": reply.last_event_id} if reply.last_event_id else {}
        try:
            with client.stream("GET", path, headers=headers) as response:
                _check_auth(response)
                if response.status_code in RETRY_STATUSES:
                    continue
                if response.status_code >= 400:
                    print(f"\nerror: {_error_message(response)}", file=sys.stderr)
                    return
                if _follow(response, reply) is Outcome.DONE:
                    return
        except httpx.TransportError:
            pass  # the server is unreachable for now (restarting, network down)
        if reply.tokens > before:
            delay, attempts, since = BACKOFF_FIRST_S, 0, time.monotonic()
    print(f"\n{GAVE_UP}", file=sys.stderr)


def _stream_reply(client: httpx.Client, session_id: str, content: str) -> None:
    reply = Reply()
    try:
        with client.stream(
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"content": content, "stream": True},
        ) as response:
            _check_auth(response)
            if response.status_code >= 400:
                print(f"error: {_error_message(response)}", file=sys.stderr)
                return
            outcome = _follow(response, reply)
    except httpx.TransportError:
        outcome = Outcome.DROPPED
    if outcome is Outcome.DROPPED:
        if reply.reply_id is None:
            # Without a reply id there is nothing to re-attach to, and sending the message
            # again could ask the same question twice.
            print(LOST_BEFORE_TURN, file=sys.stderr)
            return
        _reattach(client, session_id, reply)
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

    ``api_key`` goes out as a bearer token on every request, re-attaches included; it is
    never printed. ``transport`` replaces the network (tests).
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
        # Streams carry a keep-alive at least every 10 s: a connection silent for three of
        # them died without a close, and counts as a drop (then a re-attach).
        timeout=httpx.Timeout(10.0, read=30.0),
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
