"""ASGI middleware, one concern each: Host check, body size and read deadline, request
metrics. Refusals are answered by the one error builder."""

from __future__ import annotations

import asyncio
import ipaddress
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from axon.core.errors import InvalidRequest, PayloadTooLarge
from axon.gateway.errors import error_response
from axon.observability import metrics

_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for loopback names and addresses (``localhost``, 127.0.0.0/8, ``::1``)."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    if value.startswith("["):  # [::1]:8000
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostCheck:
    """Answer only requests whose ``Host`` is allowed. A server bound to loopback accepts
    only loopback names: otherwise a web page on any site could reach it through DNS
    rebinding (its own name resolving to 127.0.0.1) and read the conversations."""

    def __init__(self, app: ASGIApp, allowed: list[str], loopback_only: bool) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}
        self.loopback_only = loopback_only

    def _ok(self, host: str) -> bool:
        name = _host_name(host).lower()
        if "*" in self.allowed or name in self.allowed:
            return True
        if self.allowed:
            return False
        return not self.loopback_only or is_loopback(name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if not self._ok(host):
                error = InvalidRequest("this server does not answer to that Host", param="Host")
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse bodies over ``max_bytes`` with a 413, whether or not they declare a length,
    and bodies that take longer than ``timeout_s`` to arrive with a 408 (a slow client
    must not hold a connection and a request's memory for ever)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await error_response(PayloadTooLarge(self._message()))(scope, receive, send)
                return
        seen = 0
        deadline = time.monotonic() + self.timeout_s
        complete = False

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:
                # The body is read: what remains is waiting for a disconnect, which may
                # rightly take as long as the response streams.
                return await receive()
            remaining = deadline - time.monotonic()
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation (the client leaving) that arrives as the message does.
                async with asyncio.timeout(max(remaining, 0.001)):
                    message = await receive()
            except TimeoutError:
                # The framework re-raises HTTP exceptions from body reads untouched.
                raise HTTPException(408, "the request body did not arrive in time") from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes"


class Metrics:
    """Count requests and time them to the response headers, by route template (never by
    path: paths carry ids)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = _route(scope)
                method = scope["method"]
                metrics.HTTP_REQUESTS.labels(method, route, str(message["status"])).inc()
                metrics.HTTP_DURATION.labels(method, route).observe(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, observed)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
