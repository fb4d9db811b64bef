"""Authentication at the edge of every app that serves the API: the caller of each
``/v1/*`` request becomes a ``Principal`` (in ``request.state.principal``), derived by the
server from the credential alone; ``/admin/*`` requires the admin key. Every refused
credential gets the same 401 body, whatever the reason."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from axon.auth.authenticator import Authenticator
from axon.auth.base import BAD_CREDENTIAL_MESSAGE, AuthFailure
from axon.core.errors import Unauthenticated
from axon.core.types import Principal
from axon.gateway.errors import error_response
from axon.observability import metrics

log = logging.getLogger(__name__)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def refused(scope: Scope, reason: str) -> Unauthenticated:
    metrics.AUTH_FAILURES.labels(reason).inc()
    # The reason and the route, never the credential.
    log.info("request refused", extra={"reason": reason, "path": scope.get("path", "")[:200]})
    return Unauthenticated(BAD_CREDENTIAL_MESSAGE, headers={"WWW-Authenticate": "Bearer"})


class Authenticate:
    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        authorization = _header(scope, b"authorization")
        if path == "/v1" or path.startswith("/v1/"):
            try:
                principal = await self.authenticator.authenticate(authorization)
            except AuthFailure as failure:
                error = refused(scope, failure.reason)
                await error_response(error)(scope, receive, send)
                return
            scope.setdefault("state", {})["principal"] = principal
        elif path.startswith("/admin/") and not self.authenticator.is_admin(authorization):
            await error_response(refused(scope, "admin_required"))(scope, receive, send)
            return
        await self.app(scope, receive, send)


def principal(request: Request) -> Principal:
    """The caller of this request (a FastAPI dependency for the API routes)."""
    found: Principal | None = getattr(request.state, "principal", None)
    if found is None:
        # A route reached without the middleware: refuse rather than guess a tenant.
        raise Unauthenticated(BAD_CREDENTIAL_MESSAGE)
    return found
