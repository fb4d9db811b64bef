"""Session and message records as the stores return them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from axon.core.types import FinishReason, Role

MessageStatus = Literal["complete", "failed", "cancelled"]


class SessionRecord(BaseModel):
    id: str
    tenant: str
    title: str
    model: str
    system_prompt: str | None = None
    created_at: datetime
    updated_at: datetime


class MessageRecord(BaseModel):
    id: str
    session_id: str
    tenant: str
    #: Position in the conversation, assigned by the store; orders the history.
    seq: int
    role: Role
    content: str
    status: MessageStatus = "complete"
    created_at: datetime
    #: On a user message: the id of the assistant reply it asked for (the request id).
    reply_id: str | None = None
    idempotency_key: str | None = None
    #: On a user message sent with an ``Idempotency-Key``: a digest of the request, so
    #: that the key reused with a different request is refused.
    request_hash: str | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
