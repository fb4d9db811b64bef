"""The session manager: the one door to conversations. It keeps them, turns a chat request
into a queued job, relays its token stream, and stores each finished reply exactly once.

Stateless: any replica serves any session. The user message is stored before the job is
queued, and a reply is stored by whichever replica reads its completion first (the one
relaying it, or any replica's completion consumer if that one died); the store's unique
key on the reply id makes the second write a no-op.

Every method takes the caller's ``Principal`` and scopes everything by its tenant: another
tenant's session or reply is ``NotFound``, exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from axon.config import Settings
from axon.core.errors import (
    AxonError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
)
from axon.core.ids import new_id
from axon.core.types import (
    ChatMessage,
    Completion,
    EventKind,
    FinishReason,
    Job,
    Principal,
    SamplingParams,
    StreamEvent,
    Usage,
    stream_name,
)
from axon.models.base import ModelInfo
from axon.observability import metrics
from axon.observability.logging import request_id_var, session_id_var
from axon.queue.base import JobQueue
from axon.sessions.admission import Admission, Reservation, StreamSlot
from axon.sessions.cache import SessionCache
from axon.sessions.load import LoadShedder
from axon.sessions.prompt import fit_prompt, reserve_for_reply
from axon.sessions.records import MessageRecord, MessageStatus, SessionRecord
from axon.sessions.relay import Final, Relay, Relayed, Relays, nothing
from axon.sessions.store import AssistantReply, SessionStore
from axon.streaming.base import TokenStreams, parse_id

log = logging.getLogger(__name__)

#: Consumer group of the completion log shared by every session-manager replica.
COMPLETION_GROUP = "session-managers"
#: How far ahead of this replica's clock a ``Last-Event-ID`` may point (clock skew).
_FUTURE_ID_SLACK_MS = 60_000
#: A readiness check: returns normally when ready, raises when not.
Check = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Turn:
    """A chat turn that was accepted: its stored user message and the reply's id."""

    session: SessionRecord
    user_message: MessageRecord
    reply_id: str
    #: False when an ``Idempotency-Key`` matched an earlier turn (no new job was queued).
    created: bool
    #: ``x-ratelimit-*`` headers of the admission.
    headers: Mapping[str, str]


async def _nothing() -> None:
    return None


def _status(reason: FinishReason) -> MessageStatus:
    if reason is FinishReason.ERROR:
        return "failed"
    if reason is FinishReason.CANCELLED:
        return "cancelled"
    return "complete"


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
        admission: Admission,
        load: LoadShedder,
    ) -> None:
        self._settings = settings
        self._store = store
        self._cache = cache
        self._queue = queue
        self._streams = streams
        self._admission = admission
        self._load = load
        self.models = dict(models)
        self.default_model = next(iter(self.models))
        self._consumer_name = f"{socket.gethostname()}-{new_id('sm')}"
        self._relays = Relays(
            streams=streams,
            admission=admission,
            load=load,
            store_reply=self._store_reply,
            timeout_s=settings.server.request_timeout_s,
        )

    def checks(self) -> dict[str, Check]:
        """Readiness checks of everything a turn needs."""
        return {
            "store": self._store.ping,
            "queue": self._queue.ping,
            "streams": self._streams.ping,
        }

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
        self,
        principal: Principal,
        *,
        title: str | None,
        model: str | None,
        system_prompt: str | None,
    ) -> SessionRecord:
        info = self.model(model)
        if system_prompt is not None:
            self._check_text(system_prompt, "system_prompt")
        if title is not None:
            self._check_text(title, "title")
        return await self._store.create_session(
            principal.tenant,
            title=title or "New chat",
            model=info.name,
            system_prompt=system_prompt,
        )

    async def list_sessions(
        self, principal: Principal, *, limit: int, after: str | None
    ) -> tuple[list[SessionRecord], bool]:
        return await self._store.list_sessions(principal.tenant, limit=limit, after=after)

    async def get_session(
        self, principal: Principal, session_id: str
    ) -> tuple[SessionRecord, list[MessageRecord]]:
        """A session and its whole conversation."""
        session = await self._store.get_session(principal.tenant, session_id)
        messages = await self._store.recent_messages(principal.tenant, session_id, limit=10_000)
        return session, messages

    def _cache_key(self, tenant: str, session_id: str) -> str:
        return f"{tenant}/{session_id}"

    async def _history(self, tenant: str, session_id: str) -> list[MessageRecord]:
        """The newest messages of a session (the prompt's source), from the cache if warm."""
        key = self._cache_key(tenant, session_id)
        cached = await self._cache.get(key)
        if cached is not None:
            return cached
        limit = self._settings.store.history_messages
        recent = await self._store.recent_messages(tenant, session_id, limit)
        await self._cache.put(key, recent)
        return recent

    async def delete_session(self, principal: Principal, session_id: str) -> None:
        await self._store.delete_session(principal.tenant, session_id)
        await self._cache.invalidate(self._cache_key(principal.tenant, session_id))

    # -- admission --------------------------------------------------------------------

    def _check_text(self, text: str, param: str) -> None:
        cap = self._settings.limits.max_message_chars
        if len(text) > cap:
            raise PayloadTooLarge(
                f"{param} is {len(text)} characters; at most {cap} are accepted", param=param
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"{param} is not valid Unicode (it holds a lone surrogate)", param=param
            ) from None

    def _check_messages(self, messages: Sequence[ChatMessage]) -> None:
        cap = self._settings.limits.max_messages
        if len(messages) > cap:
            raise InvalidRequest(
                f"the request has {len(messages)} messages; at most {cap} are accepted",
                param="messages",
            )
        for i, message in enumerate(messages):
            self._check_text(message.content, f"messages.{i}.content")

    def _job(
        self,
        principal: Principal,
        request_id: str,
        model: str,
        messages: list[ChatMessage],
        params: SamplingParams,
        session_id: str | None,
    ) -> Job:
        now = time.time()
        return Job(
            request_id=request_id,
            model=model,
            messages=messages,
            params=params,
            session_id=session_id,
            tenant=principal.tenant,
            deadline=now + self._settings.server.request_timeout_s,
            enqueued_at=now,
        )

    def _budget(self, info: ModelInfo, params: SamplingParams) -> int:
        return reserve_for_reply(info, params.max_tokens)

    def _check_prompt_cap(self, used: int) -> None:
        cap = self._settings.limits.max_prompt_tokens
        if cap and used > cap:
            raise InvalidRequest(
                f"the prompt is {used} tokens; this server accepts at most {cap} prompt "
                "tokens per request",
                param="messages",
            )

    async def _fit(
        self,
        info: ModelInfo,
        *,
        system: str | None,
        history: list[ChatMessage],
        new: list[ChatMessage],
        reserve: int,
    ) -> tuple[list[ChatMessage], int]:
        """The prompt and its token count. Tokenizing is CPU work that grows with the
        input: it runs in a thread so a large request never stalls the event loop."""

        def work() -> tuple[list[ChatMessage], int]:
            prompt = fit_prompt(info, system=system, history=history, new=new, reserve=reserve)
            return prompt, info.tokenizer.count_prompt(prompt)

        prompt, used = await asyncio.to_thread(work)
        self._check_prompt_cap(used)
        return prompt, used

    async def _open(self, principal: Principal, holder: str) -> StreamSlot:
        return await self._admission.open_stream(principal, holder)

    async def _admit(
        self, principal: Principal, tokens: int, request_id: str
    ) -> tuple[StreamSlot, Reservation]:
        """Take a stream slot, then count the request and reserve its tokens; a request
        refused by either spends nothing on the other."""
        slot = await self._open(principal, request_id)
        try:
            reservation = await self._admission.admit(principal, tokens)
        except BaseException:
            await self._admission.close_stream(slot)
            raise
        return slot, reservation

    # -- turns ------------------------------------------------------------------------

    async def start_turn(
        self,
        principal: Principal,
        session_id: str,
        content: str,
        params: SamplingParams,
        *,
        idempotency_key: str | None = None,
    ) -> tuple[Turn, Relay]:
        """Store the user's message, then queue the job that answers it. Returns the turn
        and the relay of its reply."""
        session_id_var.set(session_id)
        tenant = principal.tenant
        if not content.strip():
            raise InvalidRequest("content must not be empty", param="content")
        self._check_text(content, "content")
        session = await self._store.get_session(tenant, session_id)
        info = self.model(session.model)
        if idempotency_key is not None:
            earlier = await self._replay_turn(principal, session, idempotency_key)
            if earlier is not None:
                return earlier
        self._load.check(info.name)
        history = [
            ChatMessage(role=m.role, content=m.content)
            for m in await self._history(tenant, session_id)
            if m.status == "complete" or m.role == "user"
        ]
        budget = self._budget(info, params)
        # Refuse before storing anything: a message that can never fit is a 400, not a turn.
        prompt, used = await self._fit(
            info,
            system=session.system_prompt,
            history=history,
            new=[ChatMessage(role="user", content=content)],
            reserve=budget,
        )
        await self._load.check_depth(self._queue, info.name)
        reply_id = new_id("msg")
        slot, reservation = await self._admit(principal, used + budget, reply_id)
        try:
            request_id_var.set(reply_id)
            user_message, created = await self._store.add_user_message(
                tenant,
                session_id,
                content=content,
                reply_id=reply_id,
                idempotency_key=idempotency_key,
            )
            if not created:
                # A concurrent retry with the same key stored first: follow its turn.
                await self._admission.settle(reservation, 0)
                earlier_id = user_message.reply_id or reply_id
                turn = Turn(session, user_message, earlier_id, False, reservation.headers)
                relay = self._relays.open(principal, session_id, earlier_id, info.name, None, slot)
                return turn, relay
            await self._cache.append(self._cache_key(tenant, session_id), user_message)
            job = self._job(principal, reply_id, info.name, prompt, params, session_id)
            await self._publish(job, reservation)
        except BaseException:
            await self._admission.settle(reservation, 0)
            await self._admission.close_stream(slot)
            raise
        turn = Turn(session, user_message, reply_id, True, reservation.headers)
        relay = self._relays.open(
            principal, session_id, reply_id, info.name, None, slot, reservation=reservation
        )
        return turn, relay

    async def _replay_turn(
        self, principal: Principal, session: SessionRecord, key: str
    ) -> tuple[Turn, Relay] | None:
        """The turn an ``Idempotency-Key`` already started, if any: a retry returns it
        (its reply as it streams, or as stored) without queueing, storing or charging
        anything again."""
        earlier = await self._store.find_by_idempotency_key(principal.tenant, session.id, key)
        if earlier is None or earlier.reply_id is None:
            return None
        relay = await self.reattach(principal, session.id, earlier.reply_id, None)
        return Turn(session, earlier, earlier.reply_id, False, {}), relay

    async def _publish(self, job: Job, reservation: Reservation) -> None:
        try:
            await self._queue.publish(job)
        except AxonError as exc:
            await self._admission.settle(reservation, 0)
            if job.session_id is not None:
                # The turn was not accepted; record why, so the history never shows a
                # question waiting forever for an answer that will not come.
                await self.record(
                    Completion(
                        request_id=job.request_id,
                        session_id=job.session_id,
                        tenant=job.tenant,
                        model=job.model,
                        text="",
                        finish_reason=FinishReason.ERROR,
                        usage=Usage(),
                        error_code=exc.code,
                        error_message=exc.message,
                    )
                )
            raise
        metrics.JOBS_PUBLISHED.labels(job.model).inc()

    async def start_completion(
        self,
        principal: Principal,
        model: str | None,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
    ) -> Relay:
        """Queue a stateless (OpenAI-style) completion; returns the relay of its reply."""
        info = self.model(model)
        if not messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        self._check_messages(messages)
        self._load.check(info.name)
        budget = self._budget(info, params)
        prompt, used = await self._fit(
            info, system=None, history=[], new=list(messages), reserve=budget
        )
        await self._load.check_depth(self._queue, info.name)
        request_id = new_id("chatcmpl")
        request_id_var.set(request_id)
        slot, reservation = await self._admit(principal, used + budget, request_id)
        try:
            await self._publish(
                self._job(principal, request_id, info.name, prompt, params, None), reservation
            )
        except BaseException:
            await self._admission.settle(reservation, 0)
            await self._admission.close_stream(slot)
            raise
        return self._relays.open(
            principal,
            None,
            request_id,
            info.name,
            None,
            slot,
            reservation=reservation,
            measure=True,
        )

    # -- replies ----------------------------------------------------------------------

    async def reattach(
        self, principal: Principal, session_id: str, reply_id: str, after: str | None
    ) -> Relay:
        """Re-attach to a reply in progress, or replay a finished one, after ``after``."""
        if after is not None:
            self._check_position(after)
        tenant = principal.tenant
        stored = await self._find_reply(tenant, session_id, reply_id)
        session = await self._store.get_session(tenant, session_id)
        stream = stream_name(tenant, reply_id)
        if stored is not None and not await self._streams.read(stream):
            # Finished long ago: the stream expired, the store still has the whole reply.
            return Relay(reply_id, session.model, self._replay(stored), {}, nothing)
        slot = await self._open(principal, new_id("attach"))
        return self._relays.open(principal, session_id, reply_id, session.model, after, slot)

    def _check_position(self, position: str) -> None:
        try:
            ms, _ = parse_id(position)
        except ValueError:
            raise InvalidRequest(
                f"Last-Event-ID {position[:64]!r} is not an event id of this stream",
                param="Last-Event-ID",
            ) from None
        if ms < 0 or ms > time.time() * 1000 + _FUTURE_ID_SLACK_MS:
            # An id from the future would hold the stream open, waiting for nothing.
            raise InvalidRequest(
                "Last-Event-ID is later than any event of this stream", param="Last-Event-ID"
            )

    async def _replay(self, stored: MessageRecord) -> AsyncIterator[Relayed]:
        event = StreamEvent(
            kind=EventKind.ERROR if stored.status == "failed" else EventKind.DONE,
            text=stored.content,
            finish_reason=stored.finish_reason,
            usage=Usage(
                prompt_tokens=stored.prompt_tokens or 0,
                completion_tokens=stored.completion_tokens or 0,
            ),
            error_code=stored.error_code,
            error_message="the reply failed" if stored.status == "failed" else None,
        )
        yield Final(None, event, stored)

    async def _find_reply(
        self, tenant: str, session_id: str, reply_id: str
    ) -> MessageRecord | None:
        """The stored reply, or None while it is in progress; ``NotFound`` if no turn of
        this session (of this tenant) asked for it."""
        if await self._store.find_turn(tenant, session_id, reply_id) is None:
            await self._store.get_session(tenant, session_id)  # a 404 for the session first
            raise NotFound(f"no reply {reply_id!r} in session {session_id!r}", param="message_id")
        return await self._store.get_message(tenant, session_id, reply_id)

    async def cancel_reply(self, principal: Principal, session_id: str, reply_id: str) -> bool:
        """Stop generating a reply; False when it had already finished."""
        stored = await self._find_reply(principal.tenant, session_id, reply_id)
        if stored is not None:
            return False
        await self._streams.cancel(stream_name(principal.tenant, reply_id))
        return True

    async def _cancel(self, tenant: str, request_id: str) -> None:
        await self._streams.cancel(stream_name(tenant, request_id))

    async def _store_reply(
        self, tenant: str, session_id: str, reply_id: str, model: str, event: StreamEvent
    ) -> MessageRecord | None:
        """Store the reply now (the completion consumer would too: one of them wins) so
        that the history read right after the final event already has it."""
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

    # -- completions ------------------------------------------------------------------

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
            key = self._cache_key(completion.tenant, completion.session_id)
            await self._cache.append(key, stored)
        return stored

    async def consume_completions(self) -> None:
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

    async def close(self) -> None:
        await self._relays.close()
