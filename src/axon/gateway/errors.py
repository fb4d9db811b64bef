"""The one way an error reaches a client: an OpenAI-style JSON body with the error's status
and headers (a route's answer, a middleware's refusal), or an SSE ``error`` frame once a
stream has begun. Never a stack trace: unexpected errors are logged and answered with a
generic 500. Every answered error is counted once, by its stable code."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from axon.core.errors import AxonError, InvalidRequest, NotFound, PayloadTooLarge, RequestTimeout
from axon.observability import metrics

log = logging.getLogger(__name__)


def error_body(error: AxonError) -> dict[str, Any]:
    """The body of ``error``, counted as answered (call once per error sent)."""
    metrics.ERRORS.labels(error.code).inc()
    return error.to_body()


def error_response(error: AxonError) -> JSONResponse:
    """A JSON response for ``error``; also an ASGI app, so middleware answers with it too."""
    return JSONResponse(error_body(error), status_code=error.status, headers=error.headers)


def error_frame(error: AxonError, *, event: str | None = "error", id: str | None = None) -> bytes:
    """``error`` as an SSE frame, for a stream whose headers are already sent."""
    if error.status >= 500:
        log.warning("stream failed", extra={"code": error.code})
    parts = []
    if event:
        parts.append(f"event: {event}\n")
    if id:
        parts.append(f"id: {id}\n")
    parts.append(f"data: {json.dumps(error_body(error), separators=(',', ':'))}\n\n")
    return "".join(parts).encode()


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


def install(app: FastAPI) -> None:
    @app.exception_handler(AxonError)
    async def _axon(_: Request, exc: AxonError) -> JSONResponse:
        if exc.status >= 500:
            log.warning("request failed", extra={"code": exc.code})
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _describe(exc)
        return error_response(InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _http_error(exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(AxonError("internal error; see the server log"))
