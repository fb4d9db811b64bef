"""The nginx edge (``deploy/nginx/axon.conf``, run by Debian's nginx with only its addresses
changed) in front of two gateways.

The first tests put nginx in front of small scripted upstreams, to pin each property of the
file on its own: the headers a gateway relies on, the body limit, events passed on one by one,
and which requests go to the next gateway (a refused connection: any; a gateway that got the
request and dropped it: a GET, never a POST).

The last test runs the distributed stack (two gateways, one session manager, one worker on
the shared PostgreSQL, Redis and RabbitMQ) behind nginx: streamed turns through it, one
gateway killed mid-reply, the cut clients re-attaching through nginx with ``Last-Event-ID``.
It uses the fake engine at a set speed: what is under test is the edge, not the model, and
its replies are long enough (120 tokens at 40 per second) to be cut mid-stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from axon.config import DEFAULT_MODEL
from support.nginx import SITE, Nginx, nginx_binary
from support.server import free_port
from support.services import cleanup, new_namespace
from support.sse import parse
from support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

#: What the gateways' settings say (AXON_SERVER__MAX_BODY_BYTES's default).
MAX_BODY_BYTES = 1_048_576


# -- scripted upstreams ----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """An HTTP server standing in for a gateway. ``mode``: ``answer`` (200 with a JSON
    body), ``drop`` (read the whole request, then close without a word, as a gateway that
    dies after taking it), or ``events`` (three SSE events, each written only once the
    test says the one before reached its client)."""

    mode: str
    seen: list[Seen] = field(default_factory=list)
    delivered: list[threading.Event] = field(
        default_factory=lambda: [threading.Event() for _ in range(3)]
    )

    def __post_init__(self) -> None:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def handle_request(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                upstream.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        self.request_version,
                        {k.lower(): v for k, v in self.headers.items()},
                        self.rfile.read(length),
                    )
                )
                if upstream.mode == "drop":
                    self.close_connection = True
                elif upstream.mode == "events":
                    upstream.write_events(self)
                else:
                    body = json.dumps({"path": self.path}).encode()
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = handle_request

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def write_events(self, handler: BaseHTTPRequestHandler) -> None:
        # No `X-Accel-Buffering: no` here: the file's own settings must pass events on.
        handler.send_response(200)
        handler.send_header("content-type", "text/event-stream")
        handler.send_header("connection", "close")
        handler.end_headers()
        handler.close_connection = True
        for i, delivered in enumerate(self.delivered):
            handler.wfile.write(f'id: {i}\nevent: token\ndata: {{"i": {i}}}\n\n'.encode())
            handler.wfile.flush()
            # The next event is written only once this one reached the client through
            # nginx: a buffering proxy would hold it, and this would wait in vain.
            if not delivered.wait(timeout=15):
                return

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def edge(tmp_path: Path, upstreams: list[str]) -> Iterator[Nginx]:
    with Nginx(Path(tempfile.mkdtemp(prefix="nginx-", dir=tmp_path)), upstreams) as nginx:
        yield nginx


@pytest.fixture
def upstreams() -> Iterator[dict[str, Upstream]]:
    nginx_binary()
    made = {mode: Upstream(mode) for mode in ("answer", "drop", "events")}
    yield made
    for upstream in made.values():
        upstream.close()


def test_headers_a_gateway_relies_on_are_set(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    answer = upstreams["answer"]
    with edge(tmp_path, [answer.address]) as nginx:
        r = httpx.get(
            f"{nginx.url}/v1/sessions/s1/messages/m1/stream",
            headers={
                "Host": "chat.example.test",
                "Last-Event-ID": "1712345678901-3",
                "Authorization": "Bearer k",
                # Written by the client itself: kept, and followed by the real peer.
                "X-Forwarded-For": "203.0.113.7",
            },
            timeout=10,
        )
    assert r.status_code == 200, r.text
    [seen] = answer.seen
    assert seen.version == "HTTP/1.1"
    # No `Connection: close`: the connection goes back to the keep-alive pool.
    assert "close" not in seen.headers.get("connection", "").lower()
    # The name the client asked for, not the upstream's name ("axon_gateways").
    assert seen.headers["host"] == "chat.example.test"
    # The gateway takes the nearest address not of a trusted proxy: the last one here.
    assert seen.headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert seen.headers["x-real-ip"] == "127.0.0.1"
    assert seen.headers["x-forwarded-proto"] == "http"
    assert seen.headers["last-event-id"] == "1712345678901-3"
    assert seen.headers["authorization"] == "Bearer k"


def test_body_limit_matches_the_gateway_and_metrics_stay_inside(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    answer = upstreams["answer"]
    with edge(tmp_path, [answer.address]) as nginx, httpx.Client(timeout=30) as http:
        at_limit = http.post(f"{nginx.url}/v1/chat/completions", content=b"x" * MAX_BODY_BYTES)
        over = http.post(f"{nginx.url}/v1/chat/completions", content=b"x" * (MAX_BODY_BYTES + 1))
        metrics = http.get(f"{nginx.url}/metrics")
    assert at_limit.status_code == 200
    assert over.status_code == 413
    assert metrics.status_code == 404
    # Only the body within the limit reached the gateway, whole; /metrics never did.
    assert [(s.path, len(s.body)) for s in answer.seen] == [
        ("/v1/chat/completions", MAX_BODY_BYTES)
    ]


def test_events_pass_one_by_one(tmp_path: Path, upstreams: dict[str, Upstream]) -> None:
    events = upstreams["events"]
    received: list[str] = []
    with (
        edge(tmp_path, [events.address]) as nginx,
        httpx.stream("GET", f"{nginx.url}/v1/sessions/s/messages/m/stream", timeout=20) as r,
    ):
        buffer = ""
        for text in r.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                [event] = parse(block + "\n\n")
                received.append(str(event.id))
                # Tell the upstream this event arrived: only then does it write the next.
                events.delivered[len(received) - 1].set()
    # A buffering proxy holds the first event back: the upstream then gives up waiting
    # and ends the stream, and the client sees one event, late.
    assert received == ["0", "1", "2"], "nginx held events back instead of passing them on"


def test_post_fails_over_only_when_no_gateway_got_it(
    tmp_path: Path, upstreams: dict[str, Upstream]
) -> None:
    answer, drop = upstreams["answer"], upstreams["drop"]
    closed = f"127.0.0.1:{free_port()}"  # nothing listens there: the connection is refused

    # A refused connection: the POST goes to the next gateway, which answers.
    with edge(tmp_path, [closed, answer.address]) as nginx:
        replies = [httpx.post(f"{nginx.url}/v1/p/{i}", json={}, timeout=10) for i in range(2)]
        logged = nginx.logged()
    assert [r.status_code for r in replies] == [200, 200]
    assert [s.path for s in answer.seen] == ["/v1/p/0", "/v1/p/1"]
    assert any(line.upstreams == [closed, answer.address] for line in logged), logged

    # A gateway that took the request and dropped it: a GET is passed on ...
    answer.seen.clear()
    with edge(tmp_path, [drop.address, answer.address]) as nginx:
        gets = [httpx.get(f"{nginx.url}/v1/g/{i}", timeout=10) for i in range(4)]
        dropped_gets = [s.path for s in drop.seen]
    assert [r.status_code for r in gets] == [200] * 4
    assert dropped_gets, "nginx never sent a GET to the dropping upstream"
    assert set(dropped_gets) <= {s.path for s in answer.seen}

    # ... a POST is not: the client gets a 502, and no other gateway sees it.
    drop.seen.clear()
    answer.seen.clear()
    with edge(tmp_path, [drop.address, answer.address]) as nginx:
        posts = {
            f"/v1/q/{i}": httpx.post(f"{nginx.url}/v1/q/{i}", json={}, timeout=10) for i in range(4)
        }
    dropped = [s.path for s in drop.seen]
    assert dropped, "nginx never sent a POST to the dropping upstream"
    for path, r in posts.items():
        assert r.status_code == (502 if path in dropped else 200), (path, r.status_code)
    reached = [s.path for s in answer.seen]
    assert sorted(dropped + reached) == sorted(posts)


# -- the stack behind nginx ------------------------------------------------------------------

REPLY_TOKENS = 120
ENV = {
    "AXON_ENGINE__KIND": "fake",
    "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "40",
    "AXON_ENGINE__FAKE_REPLY_TOKENS": str(REPLY_TOKENS),
    "AXON_ENGINE__CAPACITY": "16",
    # A few tokens per stream entry keeps the two cores for the processes under test.
    "AXON_STREAM__BATCH_INTERVAL_MS": "100",
    # A re-attaching client may briefly hold two streams; limits are not under test here.
    "AXON_LIMITS__TENANT_MAX_STREAMS": "0",
    # Draining is not under test either (the gateway is killed): stop at once afterwards.
    "AXON_SERVER__DRAIN_S": "0",
}
CONVERSATIONS = 6
#: Token events every stream must have received before the gateway is killed.
TOKENS_BEFORE_KILL = 3
REATTACH_TRIES = 10
STORE_WAIT_S = 30


@dataclass
class Reply:
    """What one client assembled of one reply, over its first stream and its re-attaches."""

    session_id: str
    reply_id: str = ""
    texts: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    final: str | None = None
    final_id: str | None = None
    final_data: Any = None
    #: Token events received before the first stream was cut (None: it was never cut).
    tokens_before_cut: int | None = None
    reattaches: int = 0
    cut: list[str] = field(default_factory=list)

    def text(self) -> str:
        """The reply as the client shows it. A reply re-attached after it finished comes
        back from the store as one ``done`` event without an id: its content completes
        what the tokens showed."""
        text = "".join(self.texts)
        if self.final != "done" or self.final_id is not None:
            return text
        content = (self.final_data.get("message") or {}).get("content")
        return content if isinstance(content, str) and content.startswith(text) else text


async def _follow(reply: Reply, r: httpx.Response, ready: asyncio.Event | None) -> bool:
    """Read events into ``reply`` until its final event (True) or the stream ends."""
    buffer = ""
    async for text in r.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            for event in parse(block + "\n\n"):
                if event.event == "turn":
                    reply.reply_id = event.data["reply_id"]
                elif event.event == "token":
                    assert event.id is not None
                    reply.texts.append(event.data["text"])
                    reply.ids.append(event.id)
                    if ready is not None and len(reply.texts) >= TOKENS_BEFORE_KILL:
                        ready.set()
                elif event.event in ("done", "error"):
                    if event.event == "error" and event.data.get("reattach"):
                        reply.cut.append(f"re-attach asked: {event.data}")
                        return False
                    reply.final, reply.final_id, reply.final_data = (
                        event.event,
                        event.id,
                        event.data,
                    )
                    return True
    reply.cut.append("stream ended without a final event")
    return False


async def _turn(
    http: httpx.AsyncClient, session_id: str, content: str, ready: asyncio.Event | None
) -> Reply:
    """One streamed turn through nginx, followed to its end, re-attaching through nginx
    whenever the stream is cut. No Idempotency-Key: a POST the edge sent twice would then
    show as two stored questions."""
    reply = Reply(session_id)
    try:
        async with http.stream(
            "POST", f"/v1/sessions/{session_id}/messages", json={"content": content}
        ) as r:
            assert r.status_code == 200, (r.status_code, await r.aread())
            if await _follow(reply, r, ready):
                return reply
    except httpx.TransportError as exc:
        reply.cut.append(type(exc).__name__)
    assert reply.reply_id, f"the stream was cut before its turn event: {reply.cut}"
    reply.tokens_before_cut = len(reply.texts)
    while reply.reattaches < REATTACH_TRIES:
        reply.reattaches += 1
        headers = {"Last-Event-ID": reply.ids[-1]} if reply.ids else {}
        url = f"/v1/sessions/{session_id}/messages/{reply.reply_id}/stream"
        try:
            async with http.stream("GET", url, headers=headers) as r:
                if r.status_code == 200 and await _follow(reply, r, None):
                    return reply
                if r.status_code != 200:
                    reply.cut.append(f"re-attach answered {r.status_code}")
        except httpx.TransportError as exc:
            reply.cut.append(type(exc).__name__)
        await asyncio.sleep(0.5)
    raise AssertionError(f"no final event after {REATTACH_TRIES} re-attaches: {reply.cut}")


async def _stored(url: str, replies: list[Reply]) -> list[tuple[Any, ...]]:
    """The messages of the replies' sessions (session, id, role, status, content), once
    every reply is stored: its relay stores it as it sends the final event, so a client
    may see that event a moment before the row is committed."""
    session_ids = sorted({reply.session_id for reply in replies})
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            for _ in range(STORE_WAIT_S * 10):
                rows = (
                    await conn.execute(
                        sa.text(
                            "SELECT session_id, id, role, status, content FROM axon_messages "
                            "WHERE session_id = ANY(:ids) ORDER BY session_id, pos"
                        ),
                        {"ids": session_ids},
                    )
                ).all()
                await conn.commit()  # a new snapshot for the next look
                if {reply.reply_id for reply in replies} <= {row[1] for row in rows}:
                    break
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    return [tuple(row) for row in rows]


def _fail_timeout_s() -> float:
    match = re.search(r"fail_timeout=(\d+)s", SITE.read_text())
    assert match is not None, "no fail_timeout in the upstream's servers"
    return float(match[1])


@pytest.fixture
def stack_behind_nginx(tmp_path: Path) -> Iterator[tuple[Stack, Nginx]]:
    nginx_binary()
    ns = new_namespace()
    stack = Stack(ns, tmp_path / "axon", ENV, managers=1, workers=1, gateways=2)
    try:
        with Nginx(tmp_path / "nginx", [f"127.0.0.1:{g.port}" for g in stack.gateways]) as nginx:
            yield stack, nginx
    finally:
        stack.stop()
        cleanup(ns, [DEFAULT_MODEL])


async def _run(stack: Stack, nginx: Nginx) -> tuple[list[Reply], list[Reply]]:
    timeout = httpx.Timeout(30.0, connect=5.0)
    async with httpx.AsyncClient(base_url=nginx.url, timeout=timeout) as http:
        session_ids = []
        for i in range(CONVERSATIONS):
            r = await http.post("/v1/sessions", json={"title": f"edge {i}"})
            assert r.status_code == 201, r.text
            session_ids.append(r.json()["id"])
        ready = [asyncio.Event() for _ in session_ids]
        first = [
            asyncio.create_task(_turn(http, sid, f"conversation {i} turn 0", ready[i]))
            for i, sid in enumerate(session_ids)
        ]
        # Every reply is mid-stream (nginx has passed its first token events on) ...
        for _ in range(600):
            if all(e.is_set() for e in ready):
                break
            for task in first:
                if task.done():
                    task.result()  # a turn that failed says why here
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("not every reply was mid-stream within 60 s")
        # ... when one gateway dies, without a chance to drain.
        killed = stack.gateways[0]
        assert killed.proc is not None
        killed.proc.send_signal(signal.SIGKILL)
        killed.proc.wait()
        before = await asyncio.gather(*first)
        # nginx leaves a gateway that refused a connection out for `fail_timeout`; once
        # that is over it tries the dead one again, and new turns must still go through.
        await asyncio.sleep(_fail_timeout_s() + 0.5)
        after = await asyncio.gather(
            *(
                _turn(http, sid, f"conversation {i} turn 1", None)
                for i, sid in enumerate(session_ids)
            )
        )
    return before, after


def test_gateway_killed_mid_reply_clients_reattach_through_nginx(
    stack_behind_nginx: tuple[Stack, Nginx],
) -> None:
    stack, nginx = stack_behind_nginx
    before, after = asyncio.run(_run(stack, nginx))

    # The streams the killed gateway carried were cut; least_conn spread the six streams
    # over both gateways, so some were. Each had passed token events on through nginx
    # while its reply was being written (events pass unbuffered), and got more after.
    cut = [reply for reply in before if reply.tokens_before_cut is not None]
    assert cut, "no stream went through the killed gateway"
    for reply in cut:
        assert reply.tokens_before_cut >= TOKENS_BEFORE_KILL, reply
        assert len(reply.texts) > reply.tokens_before_cut, reply

    # Every client's text is the stored reply exactly: nothing missing, nothing twice.
    replies = before + after
    rows = asyncio.run(_stored(stack.ns.database_url, replies))
    stored = {message_id: (status, content) for _, message_id, _, status, content in rows}
    for reply in replies:
        assert reply.final == "done", reply
        assert len(set(reply.ids)) == len(reply.ids), f"a token event came twice: {reply}"
        assert stored[reply.reply_id] == ("complete", reply.text()), reply
        assert len(reply.text().split()) == REPLY_TOKENS, reply

    # No POST was sent twice: one question per turn sent, each followed by its answer.
    for sid in {reply.session_id for reply in replies}:
        roles = [role for session, _, role, _, _ in rows if session == sid]
        assert roles == ["user", "assistant"] * 2, (sid, roles)

    # A new turn was sent to the dead gateway, refused, and passed on to the live one.
    dead, live = (f"127.0.0.1:{g.port}" for g in stack.gateways)
    passed_on = [
        line
        for line in nginx.logged()
        if line.method == "POST" and line.path.endswith("/messages") and line.status == 200
    ]
    assert any(line.upstreams == [dead, live] for line in passed_on), nginx.logged()
