"""The session manager: keeps conversations, turns a chat request into a queued job,
relays its token stream, and stores each finished reply exactly once.

Stateless: any replica serves any session. The user message is stored before the job is
queued, and a reply is stored by whichever replica reads its completion first (the one
relaying it, or any replica's completion consumer if that one died); the store's unique
key on the reply id makes the second write a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass

from axon.config import Settings
from axon.core.errors import AxonError, InvalidRequest, ModelNotFound, NotFound, Timeout
from axon.core.ids import new_id
from axon.core.types import ChatMessage, Completion, FinishReason, Job, SamplingParams, Usage
from axon.models.base import ModelInfo
from axon.observability import metrics
from axon.observability.logging import request_id_var, session_id_var
from axon.queue.base import JobQueue
from axon.sessions.cache import SessionCache
from axon.sessions.prompt import fit_prompt, reply_budget
from axon.sessions.records import MessageRecord, MessageStatus, SessionRecord
from axon.sessions.store import AssistantReply, SessionStore
from axon.streaming.base import Entry, TokenStreams

log = logging.getLogger(__name__)

#: Consumer group of the completion log shared by every session-manager replica.
COMPLETION_GROUP = "session-managers"
#: Longest a relay waits for the next entry before sending a keep-alive.
HEARTBEAT_S = 10.0


@dataclass(frozen=True, slots=True)
class Turn:
    """A chat turn that was accepted: its stored user message and the reply's id."""

    session: SessionRecord
    user_message: MessageRecord
    reply_id: str
    #: False when an ``Idempotency-Key`` matched an earlier turn (no new job was queued).
    created: bool


class SessionManager:
    def __init__(
        self,
        *,
        settings: Settings,
        store: SessionStore,
        cache: SessionCache,
        queue: JobQueue,
        streams: TokenStreams,
        models: Mapping[str, ModelInfo],
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.queue = queue
        self.streams = streams
        self.models = dict(models)
        self.default_model = next(iter(self.models))
        self._consumer_name = f"{socket.gethostname()}-{new_id('sm')}"

    # -- models -----------------------------------------------------------------------

    def model(self, name: str | None) -> ModelInfo:
        info = self.models.get(name or self.default_model)
        if info is None:
            served = ", ".join(sorted(self.models))
            raise ModelNotFound(
                f"the model {name!r} does not exist; this server serves: {served}", param="model"
            )
        return info

    # -- sessions ---------------------------------------------------------------------

    async def create_session(
        self, *, title: str | None, model: str | None, system_prompt: str | None
    ) -> SessionRecord:
        info = self.model(model)
        return await self.store.create_session(
            title=title or "New chat", model=info.name, system_prompt=system_prompt
        )

    async def history(self, session_id: str) -> list[MessageRecord]:
        """The newest messages of a session (the prompt's source), from the cache if warm."""
        cached = await self.cache.get(session_id)
        if cached is not None:
            return cached
        recent = await self.store.recent_messages(session_id, self.settings.store.history_messages)
        await self.cache.put(session_id, recent)
        return recent

    async def delete_session(self, session_id: str) -> None:
        await self.store.delete_session(session_id)
        await self.cache.invalidate(session_id)

    # -- turns ------------------------------------------------------------------------

    def _job(
        self,
        request_id: str,
        model: str,
        messages: list[ChatMessage],
        params: SamplingParams,
        session_id: str | None,
    ) -> Job:
        return Job(
            request_id=request_id,
            model=model,
            messages=messages,
            params=params,
            session_id=session_id,
            deadline=time.time() + self.settings.server.request_timeout_s,
        )

    def _budget(self, info: ModelInfo, params: SamplingParams) -> int:
        return reply_budget(info, params.max_tokens, self.settings.engine.default_max_tokens)

    async def start_turn(
        self,
        session_id: str,
        content: str,
        params: SamplingParams,
        *,
        idempotency_key: str | None = None,
    ) -> Turn:
        """Store the user's message, then queue the job that answers it."""
        session_id_var.set(session_id)
        if not content.strip():
            raise InvalidRequest("content must not be empty", param="content")
        session = await self.store.get_session(session_id)
        info = self.model(session.model)
        history = [
            ChatMessage(role=m.role, content=m.content)
            for m in await self.history(session_id)
            if m.status == "complete" or m.role == "user"
        ]
        # Refuse before storing anything: a message that can never fit is a 400, not a turn.
        prompt = fit_prompt(
            info,
            system=session.system_prompt,
            history=history,
            new=[ChatMessage(role="user", content=content)],
            reserve=self._budget(info, params),
        )
        reply_id = new_id("msg")
        request_id_var.set(reply_id)
        user_message, created = await self.store.add_user_message(
            session_id, content=content, reply_id=reply_id, idempotency_key=idempotency_key
        )
        if not created:
            return Turn(session, user_message, user_message.reply_id or reply_id, False)
        await self.cache.append(session_id, user_message)
        job = self._job(reply_id, info.name, prompt, params, session_id)
        try:
            await self.queue.publish(job)
        except AxonError as exc:
            # The turn was not accepted; record why, so the history never shows a question
            # waiting forever for an answer that will not come.
            await self.record(
                Completion(
                    request_id=reply_id,
                    session_id=session_id,
                    model=info.name,
                    text="",
                    finish_reason=FinishReason.ERROR,
                    usage=Usage(),
                    error_code=exc.code,
                    error_message=exc.message,
                )
            )
            raise
        metrics.JOBS_PUBLISHED.labels(info.name).inc()
        return Turn(session, user_message, reply_id, True)

    async def start_completion(
        self, model: str | None, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> str:
        """Queue a stateless (OpenAI-style) completion; returns its request id."""
        info = self.model(model)
        if not messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        prompt = fit_prompt(
            info, system=None, history=[], new=list(messages), reserve=self._budget(info, params)
        )
        request_id = new_id("chatcmpl")
        request_id_var.set(request_id)
        await self.queue.publish(self._job(request_id, info.name, prompt, params, None))
        metrics.JOBS_PUBLISHED.labels(info.name).inc()
        return request_id

    async def find_reply(self, session_id: str, reply_id: str) -> MessageRecord | None:
        """The stored reply, or None while it is in progress; ``NotFound`` if no turn of
        this session asked for it."""
        if await self.store.find_turn(session_id, reply_id) is None:
            await self.store.get_session(session_id)  # a 404 for the session comes first
            raise NotFound(f"no reply {reply_id!r} in session {session_id!r}", param="message_id")
        return await self.store.get_message(session_id, reply_id)

    async def cancel(self, request_id: str) -> None:
        await self.streams.cancel(request_id)

    async def events(
        self, request_id: str, after: str | None = None, *, measure: bool = False
    ) -> AsyncIterator[Entry | None]:
        """Relay a request's stream from after ``after`` to its final event. Yields None
        as a keep-alive when nothing arrived for a while. With ``measure``, the time to
        the first token (from this call) is recorded."""
        started = time.monotonic()
        deadline = started + self.settings.server.request_timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("the reply did not finish in time")
            entries = await self.streams.read(
                request_id, after, timeout_s=min(HEARTBEAT_S, remaining)
            )
            if not entries:
                yield None
                continue
            if measure:
                metrics.TURN_FIRST_TOKEN.observe(time.monotonic() - started)
                measure = False
            for entry in entries:
                yield entry
                if entry[1].final:
                    return
            after = entries[-1][0]

    # -- completions ------------------------------------------------------------------

    async def record(self, completion: Completion) -> MessageRecord | None:
        """Store a finished reply (no-op if stored before) and add it to the cache."""
        if completion.session_id is None:
            return None
        status: MessageStatus
        if completion.finish_reason is FinishReason.ERROR:
            status = "failed"
        elif completion.finish_reason is FinishReason.CANCELLED:
            status = "cancelled"
        else:
            status = "complete"
        stored = await self.store.add_assistant_message(
            AssistantReply(
                id=completion.request_id,
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
            await self.cache.append(completion.session_id, stored)
        return stored

    async def consume_completions(self) -> None:
        """Store every reply whose relay did not (its replica died, its client left).
        Runs for the life of the process, on every replica, in one consumer group."""
        while True:
            try:
                batch = await self.streams.read_completions(
                    COMPLETION_GROUP, self._consumer_name, timeout_s=5.0
                )
                for completion_id, completion in batch:
                    await self.record(completion)
                    await self.streams.ack_completion(COMPLETION_GROUP, completion_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storing completions failed; retrying")
                await asyncio.sleep(1.0)
