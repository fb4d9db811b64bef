"""The one way an error reaches a client: an OpenAI-style JSON body with the error's status
and headers (a route's answer, a middleware's refusal), or, built from the same body by
``sse.error_frame``, an SSE ``error`` event once a stream has begun. Never a stack trace:
unexpected errors are logged and answered with a generic 500. Every answered error is
counted once, by its stable code."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from axon.core.errors import (
    AxonError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
)
from axon.core.types import Principal
from axon.observability import metrics

log = logging.getLogger(__name__)


def error_body(error: AxonError) -> dict[str, Any]:
    """The body of ``error``, counted as answered (call once per error sent)."""
    metrics.ERRORS.labels(error.code).inc()
    return error.to_body()


def error_response(error: AxonError) -> JSONResponse:
    """A JSON response for ``error``; also an ASGI app, so middleware answers with it too.
    A retryable error tells the client when to retry, at the latest in a second."""
    headers = error.headers
    if error.retryable and "Retry-After" not in headers:
        headers = {**headers, "Retry-After": "1"}
    return JSONResponse(error_body(error), status_code=error.status, headers=headers)


def _describe(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    where = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return "the request body is not valid JSON", None
    if kind == "missing" and where is None:
        return "the request needs a JSON body", None
    message = first.get("msg", "invalid request")
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return (f"{where}: {message}" if where else message), where


def _http_error(exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 404:
        return error_response(NotFound("no such route"))
    if exc.status_code == 413:
        return error_response(PayloadTooLarge(str(exc.detail)))
    if exc.status_code == 408:
        return error_response(RequestTimeout(str(exc.detail)))
    if isinstance(exc.__cause__, UnicodeDecodeError):
        return error_response(InvalidRequest("the request body is not valid UTF-8"))
    # Keep the framework's status (405 method not allowed, ...) with Axon's body.
    body = error_body(InvalidRequest(str(exc.detail)))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def _allowed(request: Request) -> str:
    """Every method some route serves at this path: the router stops at the first route
    that matches the path, so its own ``Allow`` names that route's methods only."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "__none__"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def install(app: FastAPI) -> None:
    @app.exception_handler(AxonError)
    async def _axon(request: Request, exc: AxonError) -> JSONResponse:
        if isinstance(exc, RateLimited | Overloaded | PayloadTooLarge):
            # One line per refusal, with why and whose: the tenant, never the credential.
            caller: Principal | None = getattr(request.state, "principal", None)
            log.info(
                "request refused",
                extra={"reason": exc.code, "tenant": caller.tenant if caller else None},
            )
        elif exc.status >= 500:
            log.warning("request failed", extra={"code": exc.code})
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe(exc)
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _http_error(exc)
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed(request)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(AxonError("internal error; see the server log"))
