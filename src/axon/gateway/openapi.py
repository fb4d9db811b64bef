"""The OpenAPI document, told truthfully: every error answer Axon gives is documented with
its real status (400 for invalid input, never the framework's 422 for it; 422 only for an
``Idempotency-Key`` reused with another request) and its body."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from axon.gateway.schemas import ErrorOut

_REF = "#/components/schemas/{model}"

#: What each error status means on the API routes (``/v1/*``, ``/admin/*``).
ERRORS = {
    "400": "Invalid request: the body, a parameter or a header is malformed or breaks a limit.",
    "401": "Missing, wrong, expired or revoked credentials (one body for every reason).",
    "404": "No such session, reply, model or route (another tenant's ids included).",
    "408": "The request's body did not arrive in time.",
    "413": "The body, or one message, is larger than this server accepts.",
    "429": "A rate limit was reached; `Retry-After` and `x-ratelimit-*` say when to retry.",
    "500": "An internal error (details only in the server log).",
    "503": "A dependency is unavailable or the model is overloaded; retry after `Retry-After`.",
    "504": "The reply did not finish in time.",
}


_KEY_REUSED = "This `Idempotency-Key` was used for a different request in this session."


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorOut")}}},
    }


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        error_schema = ErrorOut.model_json_schema(ref_template=_REF)
        components.update(error_schema.pop("$defs", {}))
        components["ErrorOut"] = error_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith(("/v1/", "/admin/")):
                continue
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in ERRORS.items():
                    responses.setdefault(status, _error_response(description))
                if any(p.get("name") == "idempotency-key" for p in operation.get("parameters", [])):
                    responses["422"] = _error_response(_KEY_REUSED)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
