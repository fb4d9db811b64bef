"""The durable session store interface: the system of record for conversations."""

from __future__ import annotations

import abc
from dataclasses import dataclass

from axon.core.types import FinishReason
from axon.sessions.records import MessageRecord, MessageStatus, SessionRecord


@dataclass(frozen=True, slots=True)
class AssistantReply:
    """A finished reply to store. ``id`` is the request id, so storing it twice is a no-op."""

    id: str
    tenant: str
    session_id: str
    content: str
    status: MessageStatus
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error_code: str | None = None


class SessionStore(abc.ABC):
    """Every write is idempotent: a retried insert of the same message stores nothing new.

    Every method is scoped by ``tenant``: a session of another tenant behaves exactly like
    a session that does not exist (``NotFound``, the same message)."""

    @abc.abstractmethod
    async def create_session(
        self, tenant: str, *, title: str, model: str, system_prompt: str | None
    ) -> SessionRecord: ...

    @abc.abstractmethod
    async def get_session(self, tenant: str, session_id: str) -> SessionRecord:
        """Raise ``NotFound`` for an unknown id."""

    @abc.abstractmethod
    async def list_sessions(
        self, tenant: str, *, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], bool]:
        """Newest first; ``after`` is the id of the last session of the previous page.
        Returns the page and whether more follow."""

    @abc.abstractmethod
    async def delete_session(self, tenant: str, session_id: str) -> None:
        """Delete a session and its messages; raise ``NotFound`` for an unknown id."""

    @abc.abstractmethod
    async def add_user_message(
        self,
        tenant: str,
        session_id: str,
        *,
        content: str,
        reply_id: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        job: str | None = None,
    ) -> tuple[MessageRecord, bool]:
        """Store a user message; returns it and whether it is new. With an
        ``idempotency_key`` already used in this session, returns the earlier message.
        ``job`` (the job that answers it, as JSON) goes to the outbox in the same
        transaction, until ``published`` removes it."""

    @abc.abstractmethod
    async def remove_turn(self, tenant: str, session_id: str, message_id: str) -> None:
        """Remove a user message and its outbox entry: its job could not be queued, and
        the caller was told so; the conversation keeps no trace of it."""

    @abc.abstractmethod
    async def published(self, reply_id: str) -> None:
        """The job of ``reply_id`` is confirmed queued: drop it from the outbox."""

    @abc.abstractmethod
    async def unpublished(self, older_than_s: float, limit: int = 100) -> list[str]:
        """Jobs (JSON) still in the outbox after ``older_than_s`` seconds: their session
        manager died between storing the turn and queueing it."""

    @abc.abstractmethod
    async def find_by_idempotency_key(
        self, tenant: str, session_id: str, key: str
    ) -> MessageRecord | None:
        """The user message stored earlier with this ``Idempotency-Key``, if any."""

    @abc.abstractmethod
    async def add_assistant_message(self, reply: AssistantReply) -> MessageRecord | None:
        """Store a reply exactly once; returns it, or None when it was stored before or
        its session is gone."""

    @abc.abstractmethod
    async def recent_messages(
        self, tenant: str, session_id: str, limit: int
    ) -> list[MessageRecord]:
        """The newest ``limit`` messages, oldest first."""

    @abc.abstractmethod
    async def get_message(
        self, tenant: str, session_id: str, message_id: str
    ) -> MessageRecord | None: ...

    @abc.abstractmethod
    async def find_turn(self, tenant: str, session_id: str, reply_id: str) -> MessageRecord | None:
        """The user message whose reply is ``reply_id``."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` when the store cannot be reached, or cannot take
        writes (only a read-only standby answers)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
