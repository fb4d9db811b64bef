"""Request and response bodies of the HTTP API (they also make the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.sessions.records import MessageRecord, MessageStatus, SessionRecord


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class ErrorOut(BaseModel):
    """Every error answer, in OpenAI's shape."""

    error: ErrorDetail


# Request bodies are validated strictly: a string where a number belongs (or ``false``
# for a seed) is a 400, not silently converted: what the client meant is unknown.
_STRICT = ConfigDict(strict=True)


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def to_message(self) -> ChatMessage:
        text = (
            self.content
            if isinstance(self.content, str)
            else "".join(part.text for part in self.content)
        )
        # "developer" is the newer name OpenAI gives the system role.
        role = "system" if self.role == "developer" else self.role
        return ChatMessage(role=role, content=text)


StopText = Annotated[str, Field(min_length=1)]


class Sampling(BaseModel):
    """Sampling fields shared by both chat endpoints."""

    model_config = _STRICT

    max_tokens: int | None = Field(
        None, ge=1, le=2**31 - 1, description="Most tokens in the reply."
    )
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: StopText | Annotated[list[StopText], Field(max_length=4)] | None = Field(
        None, description="Up to 4 stop sequences."
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)

    def sampling(self) -> SamplingParams:
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        fields: dict[str, Any] = {"max_tokens": self.max_tokens, "stop": tuple(stops)}
        if self.temperature is not None:
            fields["temperature"] = self.temperature
        if self.top_p is not None:
            fields["top_p"] = self.top_p
        if self.seed is not None:
            fields["seed"] = self.seed
        return SamplingParams(**fields)


class StreamOptions(BaseModel):
    model_config = _STRICT

    include_usage: StrictBool = False


class ChatCompletionRequest(Sampling):
    # Clients send many optional OpenAI fields; ignoring unknown ones keeps them working.
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_completion_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    n: int = Field(1, ge=1, le=1, description="Only one choice is supported.")


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    title: str | None = Field(None, max_length=200)
    model: str | None = None
    system_prompt: str | None = None


class MessageCreate(Sampling):
    model_config = ConfigDict(extra="forbid", strict=True)

    content: str = Field(min_length=1)
    stream: StrictBool = True


class UsageOut(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MessageOut(BaseModel):
    id: str
    object: Literal["session.message"] = "session.message"
    session_id: str
    role: str
    content: str
    status: MessageStatus
    created_at: datetime
    reply_id: str | None = None
    finish_reason: FinishReason | None = None
    usage: UsageOut | None = None
    error_code: str | None = None

    @classmethod
    def of(cls, m: MessageRecord) -> MessageOut:
        usage = None
        if m.role == "assistant" and m.prompt_tokens is not None:
            completion = m.completion_tokens or 0
            usage = UsageOut(
                prompt_tokens=m.prompt_tokens,
                completion_tokens=completion,
                total_tokens=m.prompt_tokens + completion,
            )
        return cls(
            id=m.id,
            session_id=m.session_id,
            role=m.role,
            content=m.content,
            status=m.status,
            created_at=m.created_at,
            reply_id=m.reply_id,
            finish_reason=m.finish_reason,
            usage=usage,
            error_code=m.error_code,
        )


class SessionOut(BaseModel):
    id: str
    object: Literal["session"] = "session"
    title: str
    model: str
    system_prompt: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: SessionRecord) -> SessionOut:
        return cls(**s.model_dump())


class SessionWithMessages(SessionOut):
    messages: list[MessageOut]


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionOut]
    has_more: bool
    next_cursor: str | None


class SessionDeleted(BaseModel):
    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: bool = True


class TurnOut(BaseModel):
    """A finished turn (non-streaming reply)."""

    user_message: MessageOut
    message: MessageOut
    finish_reason: FinishReason
    usage: UsageOut


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    context_window: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
