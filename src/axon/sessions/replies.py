"""Storing finished replies exactly once: by the replica relaying a reply, or by any
replica's completion consumer when that one died or its client left. The store's unique key
on the reply id makes the second write a no-op."""

from __future__ import annotations

import asyncio
import logging
import socket

from axon.core.ids import new_id
from axon.core.types import Completion, FinishReason, StreamEvent, Usage
from axon.observability import metrics
from axon.sessions.cache import SessionCache, session_key
from axon.sessions.records import MessageRecord, MessageStatus
from axon.sessions.store import AssistantReply, SessionStore
from axon.streaming.base import TokenStreams

log = logging.getLogger(__name__)

#: Consumer group of the completion log shared by every session-manager replica.
COMPLETION_GROUP = "session-managers"


def _status(reason: FinishReason) -> MessageStatus:
    if reason is FinishReason.ERROR:
        return "failed"
    if reason is FinishReason.CANCELLED:
        return "cancelled"
    return "complete"


class Replies:
    def __init__(self, store: SessionStore, cache: SessionCache, streams: TokenStreams) -> None:
        self._store = store
        self._cache = cache
        self._streams = streams
        self._consumer_name = f"{socket.gethostname()}-{new_id('sm')}"

    async def record(self, completion: Completion) -> MessageRecord | None:
        """Store a finished reply (no-op if stored before) and add it to the cache."""
        if completion.session_id is None:
            return None
        status = _status(completion.finish_reason)
        stored = await self._store.add_assistant_message(
            AssistantReply(
                id=completion.request_id,
                tenant=completion.tenant,
                session_id=completion.session_id,
                content=completion.text,
                status=status,
                finish_reason=completion.finish_reason,
                prompt_tokens=completion.usage.prompt_tokens,
                completion_tokens=completion.usage.completion_tokens,
                error_code=completion.error_code,
            )
        )
        if stored is not None:
            metrics.REPLIES_STORED.labels(status).inc()
            key = session_key(completion.tenant, completion.session_id)
            await self._cache.append(key, stored)
        return stored

    async def store(
        self, tenant: str, session_id: str, reply_id: str, model: str, event: StreamEvent
    ) -> MessageRecord | None:
        """Store the reply as the relay reads its final event (the completion consumer
        would too: one of them wins), so the history read right after already has it."""
        completion = Completion(
            request_id=reply_id,
            session_id=session_id,
            tenant=tenant,
            model=model,
            text=event.text,
            finish_reason=event.finish_reason or FinishReason.ERROR,
            usage=event.usage or Usage(),
            error_code=event.error_code,
            error_message=event.error_message,
        )
        stored = await self.record(completion)
        return stored or await self._store.get_message(tenant, session_id, reply_id)

    async def consume(self) -> None:
        """Store every reply whose relay did not (its replica died, its client left).
        Runs for the life of the process, on every replica, in one consumer group."""
        while True:
            try:
                batch = await self._streams.read_completions(
                    COMPLETION_GROUP, self._consumer_name, timeout_s=5.0
                )
                for completion_id, completion in batch:
                    await self.record(completion)
                    await self._streams.ack_completion(COMPLETION_GROUP, completion_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing completions failed; retrying")
                await asyncio.sleep(1.0)
