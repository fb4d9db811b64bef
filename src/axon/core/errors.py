"""The one error tree. Each error has a stable ``code`` and an HTTP ``status``, and says
whether retrying the same request later may succeed (``retryable``: the gateway then sends
``Retry-After``). The edges translate it: the gateway into an HTTP body, or an SSE
``error`` event once a stream has begun; the worker into ack, retry or dead-letter.

    AxonError                      500 internal_error
    ├── InvalidRequest             400 invalid_request
    │   ├── ContextWindowExceeded  400 context_length_exceeded
    │   ├── PayloadTooLarge        413 payload_too_large
    │   ├── RequestTimeout         408 request_timeout
    │   └── IdempotencyKeyReused   422 idempotency_key_reused
    ├── Unauthenticated            401 invalid_api_key
    ├── PermissionDenied           403 permission_denied
    ├── NotFound                   404 not_found
    │   └── ModelNotFound          404 model_not_found
    ├── RateLimited                429 rate_limit_exceeded     (retryable)
    ├── Unavailable                503 service_unavailable     (retryable)
    │   ├── QueueUnavailable       503 queue_unavailable
    │   ├── StoreUnavailable       503 store_unavailable
    │   ├── Overloaded             503 overloaded
    │   └── ShuttingDown           503 shutting_down
    ├── Timeout                    504 timeout                 (retryable)
    ├── EngineError                500 engine_error
    ├── JobFailed                  500 job_failed
    ├── Cancelled                  499 cancelled
    └── ConfigError                500 config_error
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class AxonError(Exception):
    """Base of every error Axon raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        #: HTTP headers the answer carries (``Retry-After``, ``x-ratelimit-*``).
        self.headers: dict[str, str] = dict(headers or {})

    def to_body(self) -> dict[str, object]:
        """The OpenAI-style error body."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(AxonError):
    """The request is malformed or asks for something impossible; never retry as is."""

    code = "invalid_request"
    status = 400
    type = "invalid_request_error"


class ContextWindowExceeded(InvalidRequest):
    """The prompt (or prompt plus ``max_tokens``) cannot fit in the model's context window."""

    code = "context_length_exceeded"


class NotFound(AxonError):
    """A session, message or model that does not exist."""

    code = "not_found"
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Unauthenticated(AxonError):
    """No credential, or one that is wrong, expired, revoked or forged. Every kind answers
    the same body, so a caller learns nothing about which check failed."""

    code = "invalid_api_key"
    status = 401
    type = "authentication_error"


class PermissionDenied(AxonError):
    """A valid credential that may not do this (an admin route without the admin key)."""

    code = "permission_denied"
    status = 403
    type = "permission_error"


class RequestTimeout(InvalidRequest):
    """The client took too long to send its request."""

    code = "request_timeout"
    status = 408


class IdempotencyKeyReused(InvalidRequest):
    """An ``Idempotency-Key`` sent again with a different request: refused rather than
    answered with the first request's turn."""

    code = "idempotency_key_reused"
    status = 422


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"
    status = 413


class RateLimited(AxonError):
    code = "rate_limit_exceeded"
    status = 429
    type = "rate_limit_error"
    retryable = True


class Unavailable(AxonError):
    """A dependency (queue, store, stream bus, engine) cannot take the work right now."""

    code = "service_unavailable"
    status = 503
    type = "server_error"
    retryable = True


class QueueUnavailable(Unavailable):
    code = "queue_unavailable"


class StoreUnavailable(Unavailable):
    code = "store_unavailable"


class Overloaded(Unavailable):
    """Load shed: a model's queue is too deep or too slow to take the request now."""

    code = "overloaded"


class ShuttingDown(Unavailable):
    """This process is draining: retry, or re-attach to a stream, on another replica."""

    code = "shutting_down"


class Timeout(AxonError):
    code = "timeout"
    status = 504
    type = "server_error"
    retryable = True


class EngineError(AxonError):
    """The engine failed while generating. Retryable only before the first token."""

    code = "engine_error"
    status = 500
    type = "server_error"


class JobFailed(AxonError):
    """A job was given up on (delivery limit reached, dead-lettered)."""

    code = "job_failed"
    status = 500
    type = "server_error"


class Cancelled(AxonError):
    """The client cancelled the request."""

    code = "cancelled"
    status = 499
    type = "invalid_request_error"


class ConfigError(AxonError):
    """Configuration or an optional dependency is missing; the message names the fix."""

    code = "config_error"


_BY_CODE: dict[str, type[AxonError]] = {}


def _index(cls: type[AxonError]) -> None:
    _BY_CODE.setdefault(cls.code, cls)
    for sub in cls.__subclasses__():
        _index(sub)


_index(AxonError)


def from_code(code: str, message: str) -> AxonError:
    """Rebuild an error that crossed a process boundary as (code, message)."""
    return _BY_CODE.get(code, AxonError)(message)
