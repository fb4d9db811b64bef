"""``axon chat`` against a mock server that checks bearer keys like the gateway does, and
against a real local server whose streams drop mid-reply."""

from __future__ import annotations

import io
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from axon.cli import chat
from axon.cli.chat import KEY_REFUSED, NEEDS_KEY, run_chat

KEY = "axon_test_0123456789abcdef"
URL = "http://axon.test"
UNAUTHORIZED = {
    "error": {
        "message": "invalid or missing credentials",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


def sse(*events: tuple[str, object]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


REPLY = sse(
    ("turn", {"reply_id": "r1"}),
    ("token", {"text": "Hello"}),
    ("token", {"text": " there"}),
    ("done", {"finish_reason": "stop"}),
)


class Server:
    """Answers the session API; ``accept`` says which keys pass, ``revoke_after`` how many
    requests pass before the key stops working."""

    def __init__(self, accept: set[str], revoke_after: int | None = None) -> None:
        self.accept = accept
        self.revoke_after = revoke_after
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        revoked = self.revoke_after is not None and len(self.requests) > self.revoke_after
        if scheme != "Bearer" or token not in self.accept or revoked:
            return httpx.Response(401, json=UNAUTHORIZED)
        if request.method == "POST" and request.url.path == "/v1/sessions":
            return httpx.Response(201, json={"id": "s1"})
        if request.method == "GET" and request.url.path == "/v1/sessions/s1":
            return httpx.Response(200, json={"id": "s1", "messages": []})
        if request.method == "POST" and request.url.path == "/v1/sessions/s1/messages":
            return httpx.Response(200, content=REPLY, headers={"content-type": "text/event-stream"})
        return httpx.Response(404, json={"error": {"message": "not found"}})


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\nhow are you?\n"))


@pytest.mark.usefixtures("stdin")
@pytest.mark.parametrize("session_id", [None, "s1"])
def test_key_goes_out_as_a_bearer_token(
    capsys: pytest.CaptureFixture[str], session_id: str | None
) -> None:
    server = Server(accept={KEY})
    status = run_chat(URL, session_id, KEY, transport=httpx.MockTransport(server))

    out, err = capsys.readouterr()
    assert status == 0
    assert out.count("Hello there") == 2
    assert "session s1" in err
    assert len(server.requests) == 3
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert KEY not in out + err


@pytest.mark.usefixtures("stdin")
def test_a_missing_key_says_how_to_give_one(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(accept={KEY})
    status = run_chat(URL, None, None, transport=httpx.MockTransport(server))

    assert status == 1
    assert capsys.readouterr().err.strip() == NEEDS_KEY
    assert "authorization" not in server.requests[0].headers
    assert len(server.requests) == 1


@pytest.mark.usefixtures("stdin")
@pytest.mark.parametrize("session_id", [None, "s1"])
def test_a_refused_key_is_reported_and_never_printed(
    capsys: pytest.CaptureFixture[str], session_id: str | None
) -> None:
    server = Server(accept={"axon_some_other_key"})
    status = run_chat(URL, session_id, KEY, transport=httpx.MockTransport(server))

    out, err = capsys.readouterr()
    assert status == 1
    assert err.strip() == KEY_REFUSED
    assert KEY not in out + err
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.usefixtures("stdin")
def test_a_key_revoked_mid_session_ends_the_chat(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(accept={KEY}, revoke_after=2)
    status = run_chat(URL, None, KEY, transport=httpx.MockTransport(server))

    out, err = capsys.readouterr()
    assert status == 1
    assert out.count("Hello there") == 1
    assert err.splitlines()[-1] == KEY_REFUSED
    assert len(server.requests) == 3
    assert KEY not in out + err


@pytest.mark.usefixtures("stdin")
@pytest.mark.parametrize("api_key", ["", "  "])
def test_an_empty_key_is_no_key(capsys: pytest.CaptureFixture[str], api_key: str) -> None:
    server = Server(accept={KEY})
    assert run_chat(URL, None, api_key, transport=httpx.MockTransport(server)) == 1
    assert "authorization" not in server.requests[0].headers
    assert capsys.readouterr().err.strip() == NEEDS_KEY


@pytest.mark.usefixtures("stdin")
def test_a_key_with_a_stray_newline_still_works(capsys: pytest.CaptureFixture[str]) -> None:
    server = Server(accept={KEY})
    assert run_chat(URL, None, f"{KEY}\n", transport=httpx.MockTransport(server)) == 0
    assert server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_an_unusable_key_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    key = "axon_bad\u00e9key"
    server = Server(accept={KEY})
    assert run_chat(URL, None, key, transport=httpx.MockTransport(server)) == 1
    out, err = capsys.readouterr()
    assert not server.requests
    assert key not in out + err
    assert "axon chat:" in err


# ---- Re-attaching to a reply whose stream dropped --------------------------------------
# A real HTTP/1.1 server on a local port, so a cut is a real closed connection in the middle
# of a chunked body (as uvicorn sends SSE), seen by httpx as it would be in use.

WORDS = ["Hello", " there", ",", " my", " friend", "."]
TEXT = "".join(WORDS)
BASE_MS = 1_700_000_000_000


def event_id(i: int) -> str:
    return f"{BASE_MS}-{i}"


def frame(name: str, data: object, id: str | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {id}\n" if id else "")
    return f"{head}data: {json.dumps(data)}\n\n".encode()


TURN = frame("turn", {"user_message": {"id": "u1", "role": "user"}, "reply_id": "r1"})
TOKENS = [frame("token", {"text": w}, event_id(i)) for i, w in enumerate(WORDS)]
STORED = {"id": "r1", "role": "assistant", "content": TEXT}
DONE = frame("done", {"message": STORED, "finish_reason": "stop"}, event_id(len(WORDS)))


def error_frame(**extra: object) -> bytes:
    error = {"message": "the backend failed", "type": "server_error", "code": "engine_error"}
    return frame("error", {"error": error, **extra})


@dataclass
class Answer:
    """One scripted answer to a streaming request: ``frames`` sent whole; then, with
    ``cut``, those bytes of a further frame and the connection closed mid-body."""

    frames: list[bytes] = field(default_factory=list)
    cut: bytes | None = None
    status: int = 200


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class StreamServer:
    """Answers the session calls; each streaming request (a message, a re-attach) gets the
    next scripted answer, and a 404 once the script is used up."""

    def __init__(self, answers: list[Answer]) -> None:
        self.answers = answers
        self.requests: list[Seen] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # keep stderr for what the client prints

            def do_GET(self) -> None:
                owner.handle(self)

            def do_POST(self) -> None:
                owner.handle(self)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        # A short poll keeps shutdown (once per test) quick.
        self.thread = threading.Thread(target=self.http.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> StreamServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()

    @property
    def streams(self) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith("/v1/sessions/s1/messages")]

    @property
    def reattaches(self) -> list[Seen]:
        return [r for r in self.streams if r.method == "GET"]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        h.rfile.read(int(h.headers.get("content-length") or 0))
        headers = {k.lower(): v for k, v in h.headers.items()}
        self.requests.append(Seen(h.command, h.path, headers))
        if headers.get("authorization") != f"Bearer {KEY}":
            self.send_json(h, 401, UNAUTHORIZED)
        elif h.command == "POST" and h.path == "/v1/sessions":
            self.send_json(h, 201, {"id": "s1"})
        elif h.command == "GET" and h.path == "/v1/sessions/s1":
            self.send_json(h, 200, {"id": "s1", "messages": []})
        elif h.path in ("/v1/sessions/s1/messages", "/v1/sessions/s1/messages/r1/stream"):
            if not self.answers:
                self.send_json(h, 404, {"error": {"message": "no such reply"}})
            else:
                self.send_stream(h, self.answers.pop(0))
        else:
            self.send_json(h, 404, {"error": {"message": "not found"}})

    @staticmethod
    def send_json(h: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def send_stream(self, h: BaseHTTPRequestHandler, answer: Answer) -> None:
        if answer.status != 200:
            self.send_json(h, answer.status, {"error": {"message": "unavailable"}})
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for data in answer.frames:
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if answer.cut is None:
            h.wfile.write(b"0\r\n\r\n")
            h.wfile.flush()
            return
        # The chunk announces the whole frame, but the connection closes partway through.
        h.wfile.write(b"%x\r\n%s" % (len(answer.cut) + 64, answer.cut))
        h.wfile.flush()
        h.close_connection = True
        h.connection.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff waits the client asked for; the test does not sleep through them."""
    seen: list[float] = []
    monkeypatch.setattr(chat, "_pause", seen.append)
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    return seen


def chat_with(answers: list[Answer]) -> tuple[StreamServer, int]:
    with StreamServer(answers) as server:
        status = run_chat(server.url, None, KEY)
    return server, status


@pytest.mark.parametrize("how", ["mid-frame", "clean-eof"])
def test_a_stream_cut_mid_reply_is_reattached_and_printed_once(
    capsys: pytest.CaptureFixture[str], waits: list[float], how: str
) -> None:
    cut = TOKENS[2][:20] if how == "mid-frame" else None
    server, status = chat_with([Answer([TURN, *TOKENS[:2]], cut=cut), Answer([*TOKENS[2:], DONE])])

    out, err = capsys.readouterr()
    assert status == 0
    assert out == f"> {TEXT}\n> "
    assert "error" not in err
    [reattach] = server.reattaches
    assert reattach.path == "/v1/sessions/s1/messages/r1/stream"
    assert reattach.headers["last-event-id"] == event_id(1)
    assert {r.headers["authorization"] for r in server.requests} == {f"Bearer {KEY}"}
    assert waits == [chat.BACKOFF_FIRST_S]


def test_each_reattach_resumes_from_the_newest_event(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    server, status = chat_with(
        [
            Answer([TURN, TOKENS[0]], cut=b""),
            Answer(TOKENS[1:3], cut=TOKENS[3][:30]),
            Answer([*TOKENS[3:], DONE]),
        ]
    )

    assert status == 0
    assert capsys.readouterr().out == f"> {TEXT}\n> "
    assert [r.headers["last-event-id"] for r in server.reattaches] == [event_id(0), event_id(2)]
    # The second attempt brought tokens: the backoff starts over.
    assert waits == [chat.BACKOFF_FIRST_S, chat.BACKOFF_FIRST_S]


def test_an_error_event_asking_to_reattach_is_followed_by_a_reattach(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    server, status = chat_with(
        [
            Answer([TURN, *TOKENS[:2], error_frame(reattach=True)]),
            Answer(status=503),  # the server is still restarting
            Answer([*TOKENS[2:], DONE]),
        ]
    )

    out, err = capsys.readouterr()
    assert status == 0
    assert out == f"> {TEXT}\n> "
    assert "error" not in err
    assert [r.headers["last-event-id"] for r in server.reattaches] == [event_id(1)] * 2
    assert waits == [0.25, 0.5]


@pytest.mark.parametrize("extra", [{"reattach": False}, {}], ids=["false", "absent"])
def test_an_error_event_that_ends_the_reply_is_shown(
    capsys: pytest.CaptureFixture[str], waits: list[float], extra: dict[str, object]
) -> None:
    server, status = chat_with([Answer([TURN, TOKENS[0], error_frame(**extra)])])

    out, err = capsys.readouterr()
    assert status == 0
    assert out == f"> {WORDS[0]}\n> "
    assert "error: the backend failed" in err
    assert server.reattaches == []
    assert waits == []


def test_a_drop_before_the_turn_is_an_error_and_nothing_is_sent_again(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    server, status = chat_with([Answer(cut=TURN[:25]), Answer([TURN, *TOKENS, DONE])])

    out, err = capsys.readouterr()
    assert status == 0
    assert out == "> > "
    assert chat.LOST_BEFORE_TURN in err
    assert [r.method for r in server.streams] == ["POST"]
    assert waits == []


def test_a_drop_before_the_first_token_replays_from_the_start(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    server, status = chat_with([Answer([TURN], cut=TOKENS[0][:10]), Answer([*TOKENS, DONE])])

    assert status == 0
    assert capsys.readouterr().out == f"> {TEXT}\n> "
    [reattach] = server.reattaches
    assert "last-event-id" not in reattach.headers


def test_a_replay_from_earlier_than_asked_prints_no_token_twice(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    # A proxy between the two dropped the header: the server replays from the start.
    server, status = chat_with([Answer([TURN, *TOKENS[:3]], cut=b""), Answer([*TOKENS, DONE])])

    assert status == 0
    assert capsys.readouterr().out == f"> {TEXT}\n> "
    assert server.reattaches[0].headers["last-event-id"] == event_id(2)


def test_a_reply_finished_meanwhile_is_completed_from_the_stored_message(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    # Once a reply's stream has expired, a re-attach replays it as its `done` event alone.
    replay = frame("done", {"message": STORED, "finish_reason": "stop"})
    _, status = chat_with([Answer([TURN, *TOKENS[:2]], cut=b""), Answer([replay])])

    assert status == 0
    assert capsys.readouterr().out == f"> {TEXT}\n> "


def test_reattaching_gives_up_after_attempts_without_progress(
    capsys: pytest.CaptureFixture[str], waits: list[float]
) -> None:
    dropped = [Answer(cut=b"") for _ in range(chat.MAX_ATTEMPTS)]
    server, status = chat_with([Answer([TURN, TOKENS[0]], cut=b""), *dropped])

    out, err = capsys.readouterr()
    assert status == 0
    assert out == f"> {WORDS[0]}\n> "
    assert chat.GAVE_UP in err
    assert len(server.reattaches) == chat.MAX_ATTEMPTS
    assert {r.headers["last-event-id"] for r in server.reattaches} == {event_id(0)}
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
