"""Translate errors into OpenAI-style JSON bodies with the right status. Never a stack
trace to the client: unexpected errors are logged and answered with a generic 500."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from axon.core.errors import AxonError, InvalidRequest, NotFound, PayloadTooLarge
from axon.observability import metrics

log = logging.getLogger(__name__)


def error_response(error: AxonError, headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.ERRORS.labels(error.code).inc()
    return JSONResponse(error.to_body(), status_code=error.status, headers=headers)


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
    return (f"{where}: {message}" if where else message), where


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
        if exc.status_code == 404:
            return error_response(NotFound("no such route"))
        if exc.status_code == 413:
            return error_response(PayloadTooLarge(str(exc.detail)))
        if isinstance(exc.__cause__, UnicodeDecodeError):
            return error_response(InvalidRequest("the request body is not valid UTF-8"))
        error = InvalidRequest(str(exc.detail))
        metrics.ERRORS.labels(error.code).inc()
        return JSONResponse(error.to_body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(AxonError("internal error; see the server log"))
