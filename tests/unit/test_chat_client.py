"""``axon chat`` against a mock server that checks bearer keys like the gateway does."""

from __future__ import annotations

import io
import json

import httpx
import pytest

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
