"""The web page re-attaches to a reply whose stream dropped: a real `axon serve` (fake
engine, slow enough for the reply to last a few seconds) behind a TCP proxy that cuts the
first streamed turn's connection partway through its reply."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from support.server import start_axon

pytestmark = pytest.mark.browser

TIMEOUT_MS = 60_000
PROMPT = "Tell me about rivers."

# Every change to the newest assistant message or to the status line, with whether Stop
# was showing: the test reads what the page showed while the reply streamed.
RECORD_PAGE = """() => {
  window.__seen = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    const last = all[all.length - 1];
    window.__seen.push({
      text: last ? last.textContent : null,
      status: document.querySelector('[data-testid="status"]').textContent,
      generating: !document.querySelector('[data-testid="stop"]').hidden,
    });
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
}"""

REQUEST_HEAD = re.compile(
    rb"(GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS) (\S+) HTTP/1\.[01]\r\n(.*?)\r\n\r\n", re.S
)
MESSAGES_POST = re.compile(r"^/v1/sessions/[^/]+/messages$")
# A whole token frame: one cut inside it is not.
TOKEN_FRAME = re.compile(rb"event: token\nid: ([0-9-]+)\ndata: [^\n]*\n\n")
DATA = re.compile(rb"event: token\nid: [0-9-]+\ndata: ([^\n]*)\n\n")

#: How long the bytes before a cut get to reach the page before the connection is cut.
CUT_SETTLE_S = 0.3

#: Where to cut a streamed turn's response (its raw bytes, head included): the length to
#: let through, or None while the cut is not due yet.
CutAt = Callable[[bytes], int | None]


def in_the_fourth_token(response: bytes) -> int | None:
    """Partway into the fourth token frame: three tokens shown, a piece of one more sent."""
    starts = [m.start() for m in re.finditer(rb"event: token\n", response)]
    return starts[3] + len(b"event: token\nid: 1") if len(starts) > 3 else None


def before_the_fourth_token(response: bytes) -> int | None:
    """Between two chunks of the body, before the fourth token's: a place to end the body
    with a chunk of the test's own."""
    starts = [m.start() for m in re.finditer(rb"event: token\n", response)]
    if len(starts) <= 3:
        return None
    # The chunk's size line precedes its frame: cut after the previous chunk's CRLF.
    return response.rfind(b"\r\n", 0, starts[3] - 2) + 2


def error_chunks(reattach: bool) -> bytes:
    """An `error` event as the server ends a stream with, and the body's last chunk."""
    error = {"message": "the backend failed", "type": "server_error", "code": "engine_error"}
    body = json.dumps({"error": error, "reattach": reattach}).encode()
    event = b"event: error\ndata: %s\n\n" % body
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(event), event)


def after_the_turn(response: bytes) -> int | None:
    """Right after the whole `turn` event, before any token."""
    turn = response.find(b"event: turn\n")
    end = response.find(b"\n\n", turn) if turn >= 0 else -1
    return end + 2 if end >= 0 else None


def after_the_head(response: bytes) -> int | None:
    """After the response's status and headers: no event at all."""
    end = response.find(b"\r\n\r\n")
    return end + 4 if end >= 0 else None


@dataclass
class Head:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Link:
    """One proxied connection: the browser's socket and the server's."""

    client: socket.socket
    upstream: socket.socket
    sent_up: bytearray = field(default_factory=bytearray)
    parsed_up: int = 0  # how far request heads were read from sent_up
    sent_down: int = 0  # bytes of responses passed to the browser
    armed_at: int | None = None  # where the response of a streamed turn starts
    response: bytearray = field(default_factory=bytearray)


class CuttingProxy:
    """Forwards TCP connections to the server, records every request head, and cuts the
    connection of the first streamed turn (``POST …/messages``) once ``cut_at`` says,
    sending ``inject`` instead of the rest."""

    def __init__(self, upstream_port: int, cut_at: CutAt, inject: bytes = b"") -> None:
        self.upstream_port = upstream_port
        self.cut_at = cut_at
        self.inject = inject
        self.heads: list[Head] = []
        self.cut_done = threading.Event()
        #: The bytes of the cut response that reached the browser.
        self.cut_response = b""
        self.lock = threading.Lock()
        self.links: list[Link] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            link = Link(client, upstream)
            with self.lock:
                self.links.append(link)
            threading.Thread(target=self.pump_up, args=(link,), daemon=True).start()
            threading.Thread(target=self.pump_down, args=(link,), daemon=True).start()

    def pump_up(self, link: Link) -> None:
        while data := self.receive(link.client):
            with self.lock:
                link.sent_up += data
                for head in self.read_heads(link):
                    self.heads.append(head)
                    if (
                        head.method == "POST"
                        and MESSAGES_POST.match(head.path)
                        and not self.cut_done.is_set()
                        and link.armed_at is None
                    ):
                        # HTTP/1.1 without pipelining: the previous response on this
                        # connection has reached the browser, all of it.
                        link.armed_at = link.sent_down
            if not self.send(link.upstream, data):
                break
        self.close(link.upstream, write_only=True)

    def pump_down(self, link: Link) -> None:
        while data := self.receive(link.upstream):
            with self.lock:
                cut = None
                if link.armed_at is not None and not self.cut_done.is_set():
                    link.response += data
                    cut = self.cut_at(bytes(link.response))
                if cut is not None:
                    passed = cut - (len(link.response) - len(data))
                    data = data[: max(0, passed)] + self.inject
                    self.cut_response = bytes(link.response[:cut])
                    self.cut_done.set()
                link.sent_down += len(data)
            if data and not self.send(link.client, data):
                break
            if cut is not None:
                # Let what was sent reach the page first: a reset can discard data the
                # browser has received but not yet read. Then the browser sees its
                # connection fail mid-body; the server sees its client go, and keeps the
                # reply going as it does for any client that leaves.
                time.sleep(CUT_SETTLE_S)
                self.close(link.client)
                self.close(link.upstream)
                return
        self.close(link.client, write_only=True)

    @staticmethod
    def read_heads(link: Link) -> Iterator[Head]:
        while match := REQUEST_HEAD.search(link.sent_up, link.parsed_up):
            link.parsed_up = match.end()
            headers = {}
            for line in match.group(3).decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            yield Head(match.group(1).decode(), match.group(2).decode(), headers)

    @staticmethod
    def receive(sock: socket.socket) -> bytes:
        try:
            return sock.recv(65536)
        except OSError:
            return b""

    @staticmethod
    def send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
        except OSError:
            return False
        return True

    @staticmethod
    def close(sock: socket.socket, *, write_only: bool = False) -> None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_WR if write_only else socket.SHUT_RDWR)
        if not write_only:
            sock.close()

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            links = list(self.links)
        for link in links:
            self.close(link.client)
            self.close(link.upstream)

    def streamed(self, session_id: str) -> tuple[list[Head], list[Head]]:
        """The turn's requests that reached the server: its POSTs, then its re-attaches."""
        base = f"/v1/sessions/{session_id}/messages"
        with self.lock:
            posts = [h for h in self.heads if h.method == "POST" and h.path == base]
            reattaches = [
                h
                for h in self.heads
                if h.method == "GET" and re.fullmatch(rf"{base}/[^/]+/stream", h.path)
            ]
        return posts, reattaches


@pytest.fixture(scope="module")
def slow_axon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A real `axon serve` with the fake engine at about three seconds a reply."""
    env = {
        "AXON_ENGINE__KIND": "fake",
        "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "15",
        "AXON_ENGINE__FAKE_REPLY_TOKENS": "40",
    }
    data_dir = tmp_path_factory.mktemp("axon-browser-reattach")
    with start_axon(["serve"], env=env, data_dir=data_dir) as axon:
        yield axon.url, axon.port


@contextmanager
def proxy_for(
    slow_axon: tuple[str, int], cut_at: CutAt, inject: bytes = b""
) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(slow_axon[1], cut_at, inject)
    try:
        yield proxy
    finally:
        proxy.stop()


def send(page: Page, proxy: CuttingProxy) -> str:
    """Open the page through the proxy and send PROMPT; returns the new session's id."""
    page.goto(f"{proxy.url}/")
    page.evaluate(RECORD_PAGE)
    composer = page.get_by_test_id("composer")
    composer.fill(PROMPT)
    composer.press("Enter")
    expect(page).to_have_url(re.compile(r"#s=.+"), timeout=TIMEOUT_MS)
    return page.url.split("#s=", 1)[1]


def stored_reply(url: str, session_id: str) -> dict[str, Any]:
    """The assistant message as the server stored it, straight from the server."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{url}/v1/sessions/{session_id}", timeout=10)
        response.raise_for_status()
        replies = [m for m in response.json()["messages"] if m["role"] == "assistant"]
        if replies or time.monotonic() > deadline:
            assert len(replies) == 1, response.json()
            reply: dict[str, Any] = replies[0]
            return reply
        time.sleep(0.2)


@pytest.mark.parametrize(
    "cut_at",
    [
        pytest.param(in_the_fourth_token, id="mid-reply"),
        pytest.param(after_the_turn, id="no-token"),
    ],
)
def test_a_dropped_stream_is_reattached_and_the_reply_shown_whole_once(
    page: Page, slow_axon: tuple[str, int], cut_at: CutAt
) -> None:
    with proxy_for(slow_axon, cut_at) as proxy:
        session_id = send(page, proxy)
        assistant = page.locator('[data-testid="message"][data-role="assistant"]')
        expect(page.get_by_test_id("stop")).to_be_hidden(timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("status")).to_have_text(re.compile(r"^Done"))
        expect(page.get_by_test_id("error")).to_be_hidden()
        expect(assistant).to_have_count(1)

        assert proxy.cut_done.is_set(), "the proxy never cut the streamed turn"
        stored = stored_reply(slow_axon[0], session_id)
        assert stored["finish_reason"] == "stop"
        assert assistant.text_content() == stored["content"]
        assert assistant.get_attribute("data-message-id") == stored["id"]

        # While streaming the page never showed a repeated or a missing token: every text
        # it showed is the start of the stored reply.
        seen: list[dict[str, Any]] = page.evaluate("window.__seen")
        shown = [s["text"] for s in seen if s["generating"] and s["text"] is not None]
        wrong = [t for t in shown if not stored["content"].startswith(t)]
        assert not wrong, f"shown while streaming, not the start of the reply: {wrong}"
        reconnecting = [s for s in seen if s["status"] == "Reconnecting…"]
        assert reconnecting, "the page never said it was reconnecting"

        # One turn sent, re-attached from the last whole event the browser received.
        passed = TOKEN_FRAME.findall(proxy.cut_response)
        posts, reattaches = proxy.streamed(session_id)
        assert len(posts) == 1
        assert reattaches, "no re-attach request reached the server"
        assert reattaches[0].path.endswith(f"/messages/{stored['id']}/stream")
        if cut_at is in_the_fourth_token:
            assert len(passed) == 3
            assert reattaches[0].headers.get("last-event-id") == passed[-1].decode()
            # The three tokens were on the page when the connection dropped.
            assert reconnecting[0]["text"], "nothing was shown before the drop"
        else:
            assert passed == []
            assert "last-event-id" not in reattaches[0].headers


def test_a_drop_before_the_turn_began_is_an_error_and_nothing_is_resent(
    page: Page, slow_axon: tuple[str, int]
) -> None:
    with proxy_for(slow_axon, after_the_head) as proxy:
        session_id = send(page, proxy)
        error = page.get_by_test_id("error")
        expect(error).to_have_text(
            "The connection closed before the reply began.", timeout=TIMEOUT_MS
        )
        expect(page.get_by_test_id("stop")).to_be_hidden()
        # The text is back in the composer for the user to decide; nothing retries it.
        expect(page.get_by_test_id("composer")).to_have_value(PROMPT)
        page.wait_for_timeout(1500)
        posts, reattaches = proxy.streamed(session_id)
        assert (len(posts), reattaches) == (1, [])


def test_an_error_event_asking_to_reattach_is_followed_by_a_reattach(
    page: Page, slow_axon: tuple[str, int]
) -> None:
    # The body ends cleanly, with the error: only the event says to re-attach.
    with proxy_for(slow_axon, before_the_fourth_token, error_chunks(reattach=True)) as proxy:
        session_id = send(page, proxy)
        assistant = page.locator('[data-testid="message"][data-role="assistant"]')
        expect(page.get_by_test_id("stop")).to_be_hidden(timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("status")).to_have_text(re.compile(r"^Done"))
        expect(page.get_by_test_id("error")).to_be_hidden()

        stored = stored_reply(slow_axon[0], session_id)
        assert assistant.text_content() == stored["content"]
        seen: list[dict[str, Any]] = page.evaluate("window.__seen")
        shown = [s["text"] for s in seen if s["generating"] and s["text"] is not None]
        assert all(stored["content"].startswith(t) for t in shown), shown

        passed = TOKEN_FRAME.findall(proxy.cut_response)
        posts, reattaches = proxy.streamed(session_id)
        assert len(passed) == 3
        assert len(posts) == 1
        assert reattaches, "no re-attach request reached the server"
        assert reattaches[0].headers.get("last-event-id") == passed[-1].decode()


def test_an_error_event_that_ends_the_reply_is_shown_and_not_reattached(
    page: Page, slow_axon: tuple[str, int]
) -> None:
    with proxy_for(slow_axon, before_the_fourth_token, error_chunks(reattach=False)) as proxy:
        session_id = send(page, proxy)
        expect(page.get_by_test_id("error")).to_have_text("the backend failed", timeout=TIMEOUT_MS)
        expect(page.get_by_test_id("stop")).to_be_hidden()
        assistant = page.locator('[data-testid="message"][data-role="assistant"]')
        expect(assistant).to_have_attribute("data-finish", "error")
        # What arrived stays on the page: the three tokens before the error.
        words = [json.loads(d)["text"] for d in DATA.findall(proxy.cut_response)]
        expect(assistant).to_have_text("".join(words))
        page.wait_for_timeout(1500)
        posts, reattaches = proxy.streamed(session_id)
        assert (len(posts), reattaches) == (1, [])
