"""The one error tree. Each error has a stable ``code``, an HTTP ``status`` and says
whether retrying may help; the edges translate it (gateway: HTTP/SSE body; worker:
ack, retry or dead-letter)."""

from __future__ import annotations

from typing import ClassVar


class AxonError(Exception):
    """Base of every error Axon raises on purpose."""

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

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


class Conflict(AxonError):
    """The request conflicts with the current state (e.g. a turn already in progress)."""

    code = "conflict"
    status = 409
    type = "invalid_request_error"


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
