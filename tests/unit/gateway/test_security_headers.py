"""The security headers middleware, around a tiny Starlette app."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from axon.gateway.headers import CONTENT_SECURITY_POLICY, SecurityHeaders

EVERY_RESPONSE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}


async def page(request: Request) -> Response:
    return HTMLResponse("<!doctype html><title>t</title>")


async def data(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def framed(request: Request) -> Response:
    return HTMLResponse(
        "<p>embeddable</p>",
        headers={
            "X-Frame-Options": "SAMEORIGIN",
            "Content-Security-Policy": "frame-ancestors 'self'",
        },
    )


async def events(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"event: token\ndata: {}\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = Starlette(
        routes=[
            Route("/page", page),
            Route("/data", data),
            Route("/framed", framed),
            Route("/events", events),
        ]
    )
    transport = httpx.ASGITransport(app=SecurityHeaders(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.mark.parametrize("path", ["/page", "/data", "/events", "/missing"])
async def test_every_response_gets_the_hardening_headers(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)
    for name, value in EVERY_RESPONSE.items():
        assert response.headers.get_list(name) == [value], name


async def test_html_gets_the_content_security_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/page")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.text == "<!doctype html><title>t</title>"


@pytest.mark.parametrize("path", ["/data", "/events", "/missing"])
async def test_other_content_gets_no_policy(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert "content-security-policy" not in response.headers


async def test_headers_the_response_sets_are_kept(client: httpx.AsyncClient) -> None:
    response = await client.get("/framed")
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers.get_list("content-security-policy") == ["frame-ancestors 'self'"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_names_and_content_types_match_in_any_case() -> None:
    async def raw(scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"Content-Type", b"TEXT/HTML; charset=UTF-8"), (b"Referrer-Policy", b"origin")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"<p>raw</p>"})

    transport = httpx.ASGITransport(app=SecurityHeaders(raw))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.headers.get_list("referrer-policy") == ["origin"]
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-frame-options"] == "DENY"


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        raise AssertionError("a lifespan scope sends no response")

    await SecurityHeaders(app)({"type": "lifespan"}, receive, send)
    assert seen == ["lifespan"]
