"""ASGI middleware that adds the browser security headers to every HTTP response."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The web page loads only its own script and styles and talks only to its own origin, so
#: injected markup can neither run code nor send data elsewhere. ``data:`` images are for
#: the empty favicon, which keeps the browser from asking for ``/favicon.ico``.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)

Header = tuple[bytes, bytes]

# On every response: a JSON error body must never be sniffed into HTML, and
# X-Frame-Options covers the browsers that predate ``frame-ancestors``.
_EVERY_RESPONSE: tuple[Header, ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
# The policy only governs documents, so only HTML responses carry it.
_HTML_ONLY: tuple[Header, ...] = ((b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),)


class SecurityHeaders:
    """Add the hardening headers to every HTTP response and the content security policy to
    HTML ones; a header the response already sets is left as the response set it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": _with_defaults(message.get("headers", ()))}
            await send(message)

        await self.app(scope, receive, hardened)


def _with_defaults(raw: Iterable[Header]) -> list[Header]:
    headers = [(bytes(name), bytes(value)) for name, value in raw]
    present = {name.lower() for name, _ in headers}
    content_type = next((v for n, v in headers if n.lower() == b"content-type"), b"")
    wanted = _EVERY_RESPONSE
    if content_type.partition(b";")[0].strip().lower() == b"text/html":
        wanted += _HTML_ONLY
    return headers + [(name, value) for name, value in wanted if name not in present]
