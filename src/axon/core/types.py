"""Value types that cross seams: chat messages, sampling parameters, jobs, stream events.

They are pydantic models because each of them crosses a process boundary in production
(a job over AMQP, an event through a Redis Stream), and validation there is the point.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Role
    content: str


class SamplingParams(BaseModel):
    """What the engine needs to sample one reply."""

    model_config = ConfigDict(frozen=True)

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the server derived it from the credential (never from anything
    else the client sends). Every conversation, stream and limit is scoped by ``tenant``."""

    tenant: str
    #: ``key:<id>``, ``jwt:<subject>`` or ``anonymous``: names the caller in logs and
    #: limits, never the credential itself.
    subject: str
    #: The API key's id, when the caller used one.
    key_id: str | None = None
    #: Limits of this caller's key (None: the configured default; 0: unlimited).
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_streams: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.subject == "anonymous"


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    CANCELLED = "cancelled"
    ERROR = "error"


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Job(BaseModel):
    """Everything a worker needs to produce one reply; workers never read the session store.

    ``request_id`` names the token stream and, for session turns, the assistant message.
    """

    request_id: str
    model: str
    messages: list[ChatMessage]
    params: SamplingParams
    session_id: str | None = None
    #: The tenant the server derived from the caller's credential; names the stream.
    tenant: str = "default"
    #: Unix time after which nobody waits for the answer any more.
    deadline: float
    #: Unix time the job was published (how long it waited in the queue).
    enqueued_at: float | None = None
    #: W3C trace context, so a trace continues across the queue.
    traceparent: str | None = None

    @property
    def stream(self) -> str:
        """The name of this job's token stream and cancel flag."""
        return stream_name(self.tenant, self.request_id)


def stream_name(tenant: str, request_id: str) -> str:
    """Streams are namespaced by tenant (tenant names cannot contain ``/``), so an id of
    another tenant's reply never reaches its tokens."""
    return f"{tenant}/{request_id}"


class EventKind(StrEnum):
    TOKENS = "tokens"
    DONE = "done"
    ERROR = "error"


class Timings(BaseModel):
    """Where a reply's time went on its worker (seconds), carried on its final event so that
    the one log line of a finished turn can say it."""

    queue_wait_s: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None


class StreamEvent(BaseModel):
    """One entry of a request's token stream.

    A ``tokens`` event carries a batch of text (several tokens per entry: per-message costs
    dominate a Python serving path, so batching is what keeps it fast). The last event is
    ``done`` (full text, usage, finish reason) or ``error``.
    """

    kind: EventKind
    text: str = ""
    tokens: int = 0
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: On the final event only.
    timings: Timings | None = None

    @property
    def final(self) -> bool:
        return self.kind is not EventKind.TOKENS


class Completion(BaseModel):
    """A finished request, handed to the session manager to store the assistant message."""

    request_id: str
    session_id: str | None
    tenant: str = "default"
    model: str
    text: str
    finish_reason: FinishReason
    usage: Usage
    error_code: str | None = None
    error_message: str | None = None
