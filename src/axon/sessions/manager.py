"""The session manager: the one door to conversations. It keeps them, turns a chat request
into a queued job, relays its token stream, and stores each finished reply exactly once.

Stateless: any replica serves any session. The user message is stored with its job in the
outbox before the job is queued (a replica that dies in between leaves it for the outbox
sweeper); a job the broker refuses removes the turn again, so a 503 leaves nothing behind.
A reply is stored by whichever replica reads its completion first (the one relaying it,
or any replica's completion consumer if that one died); the store's unique key on the
reply id makes the second write a no-op.

Every method takes the caller's ``Principal`` and scopes everything by its tenant: another
tenant's session or reply is ``NotFound``, exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from axon.config import Settings
from axon.core.errors import (
    AxonError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    StoreUnavailable,
)
from axon.core.ids import new_id
from axon.core.types import (
    ChatMessage,
    Completion,
    EventKind,
    Job,
    Principal,
    SamplingParams,
    StreamEvent,
    Usage,
    stream_name,
)
from axon.models.base import ModelInfo
from axon.observability import metrics, tracing
from axon.observability.logging import request_id_var, session_id_var
from axon.queue.base import JobQueue
from axon.sessions.admission import Admission, Reservation, StreamSlot
from axon.sessions.cache import SessionCache, session_key
from axon.sessions.idempotency import request_hash_of, same_request
from axon.sessions.intake import Intake
from axon.sessions.load import LoadShedder
from axon.sessions.outbox import OutboxSweeper
from axon.sessions.queue_gauges import QueueGauges
from axon.sessions.records import MessageRecord, SessionRecord
from axon.sessions.relay import Final, Relay, Relayed, Relays, TurnMeter, nothing
from axon.sessions.replies import Replies
from axon.sessions.store import SessionStore
from axon.streaming.base import TokenStreams, parse_id

log = logging.getLogger(__name__)

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
        self._intake = Intake(settings.limits)
        self._replies = Replies(store, cache, streams)
        self._outbox = OutboxSweeper(store, queue, after_s=settings.store.outbox_after_s)
        self._background: set[asyncio.Task[None]] = set()
        self._relays = Relays(
            streams=streams,
            admission=admission,
            load=load,
            store_reply=self._replies.store,
            # The worker ends a reply at its deadline with a final event of its own; the
            # relay waits a takeover longer, so that it never reports a timeout for a
            # reply that then finishes (it gives up only on a reply nobody runs).
            timeout_s=settings.server.request_timeout_s + settings.worker.lease_s + 10.0,
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
            self._intake.check_text(system_prompt, "system_prompt")
        if title is not None:
            self._intake.check_text(title, "title")
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

    async def _history(self, tenant: str, session_id: str) -> list[MessageRecord]:
        """The newest messages of a session (the prompt's source), from the cache if warm."""
        key = session_key(tenant, session_id)
        cached = await self._cache.get(key)
        metrics.CACHE_LOOKUPS.labels("miss" if cached is None else "hit").inc()
        if cached is not None:
            return cached
        limit = self._settings.store.history_messages
        recent = await self._store.recent_messages(tenant, session_id, limit)
        await self._cache.put(key, recent)
        return recent

    async def delete_session(self, principal: Principal, session_id: str) -> None:
        await self._store.delete_session(principal.tenant, session_id)
        await self._cache.invalidate(session_key(principal.tenant, session_id))

    # -- admission --------------------------------------------------------------------

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
            # The worker continues this trace (also when the outbox sweeper queues it).
            traceparent=tracing.traceparent(),
        )

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
        arrived = time.monotonic()
        session_id_var.set(session_id)
        tenant = principal.tenant
        if not content.strip():
            raise InvalidRequest("content must not be empty", param="content")
        self._intake.check_text(content, "content")
        session = await self._store.get_session(tenant, session_id)
        info = self.model(session.model)
        request_hash = None
        if idempotency_key is not None:
            request_hash = request_hash_of(content, params)
            earlier = await self._replay_turn(principal, session, idempotency_key, request_hash)
            if earlier is not None:
                return earlier
        self._load.check(info.name)
        history = [
            ChatMessage(role=m.role, content=m.content)
            for m in await self._history(tenant, session_id)
            if m.status == "complete" or m.role == "user"
        ]
        # Refuse before storing anything: a message that can never fit is a 400, not a turn.
        prompt = await self._intake.prompt(
            info,
            system=session.system_prompt,
            history=history,
            new=[ChatMessage(role="user", content=content)],
            max_tokens=params.max_tokens,
        )
        await self._load.check_depth(self._queue, info.name)
        reply_id = new_id("msg")
        slot, reservation = await self._admit(
            principal, prompt.tokens + prompt.reply_budget, reply_id
        )
        try:
            request_id_var.set(reply_id)
            job = self._job(principal, reply_id, info.name, prompt.messages, params, session_id)
            user_message, created = await self._store.add_user_message(
                tenant,
                session_id,
                content=content,
                reply_id=reply_id,
                idempotency_key=idempotency_key,
                request_hash=request_hash,
                job=job.model_dump_json(),
            )
            if not created:
                # A concurrent retry with the same key stored first: follow its turn.
                same_request(user_message, request_hash)
                await self._admission.settle(reservation, 0)
                earlier_id = user_message.reply_id or reply_id
                turn = Turn(session, user_message, earlier_id, False, reservation.headers)
                relay = self._relays.open(principal, session_id, earlier_id, info.name, None, slot)
                return turn, relay
            try:
                await self._publish(job, reservation)
            except AxonError:
                # Refused: the client gets a 503 and the conversation keeps no trace of
                # the turn, so a retry (with the same key or not) asks it once.
                await self._store.remove_turn(tenant, session_id, user_message.id)
                raise
            self._after(self._store.published(reply_id))
            await self._cache.append(session_key(tenant, session_id), user_message)
        except BaseException:
            await self._admission.settle(reservation, 0)
            await self._admission.close_stream(slot)
            raise
        turn = Turn(session, user_message, reply_id, True, reservation.headers)
        relay = self._relays.open(
            principal,
            session_id,
            reply_id,
            info.name,
            None,
            slot,
            reservation=reservation,
            turn=self._queued(info.name, arrived),
        )
        return turn, relay

    async def _replay_turn(
        self, principal: Principal, session: SessionRecord, key: str, request_hash: str
    ) -> tuple[Turn, Relay] | None:
        """The turn an ``Idempotency-Key`` already started, if any: a retry returns it
        (its reply as it streams, or as stored) without queueing, storing or charging
        anything again. The same key with a different request is refused."""
        earlier = await self._store.find_by_idempotency_key(principal.tenant, session.id, key)
        if earlier is None or earlier.reply_id is None:
            return None
        same_request(earlier, request_hash)
        relay = await self.reattach(principal, session.id, earlier.reply_id, None)
        return Turn(session, earlier, earlier.reply_id, False, {}), relay

    def _queued(self, model: str, arrived: float) -> TurnMeter:
        meter = TurnMeter(model, arrived, time.monotonic())
        metrics.TURN_STAGE.labels(model, "admit").observe(meter.queued - arrived)
        return meter

    async def _publish(self, job: Job, reservation: Reservation) -> None:
        try:
            await self._queue.publish(job)
        except AxonError:
            await self._admission.settle(reservation, 0)
            raise
        metrics.JOBS_PUBLISHED.labels(job.model).inc()

    def _after(self, work: Awaitable[None]) -> None:
        """Bookkeeping that need not delay the reply (a failure only leaves work for the
        outbox sweeper)."""

        async def run() -> None:
            try:
                await work
            except AxonError as exc:
                log.warning("background bookkeeping failed", extra={"code": exc.code})

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def start_completion(
        self,
        principal: Principal,
        model: str | None,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
    ) -> Relay:
        """Queue a stateless (OpenAI-style) completion; returns the relay of its reply."""
        arrived = time.monotonic()
        info = self.model(model)
        self._intake.check_messages(messages)
        self._load.check(info.name)
        prompt = await self._intake.prompt(
            info, system=None, history=[], new=list(messages), max_tokens=params.max_tokens
        )
        await self._load.check_depth(self._queue, info.name)
        request_id = new_id("chatcmpl")
        request_id_var.set(request_id)
        slot, reservation = await self._admit(
            principal, prompt.tokens + prompt.reply_budget, request_id
        )
        try:
            job = self._job(principal, request_id, info.name, prompt.messages, params, None)
            await self._publish(job, reservation)
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
            turn=self._queued(info.name, arrived),
        )

    # -- replies ----------------------------------------------------------------------

    async def reattach(
        self, principal: Principal, session_id: str, reply_id: str, after: str | None
    ) -> Relay:
        """Re-attach to a reply in progress, or replay a finished one, after ``after``."""
        if after is not None:
            self._check_position(after)
        tenant = principal.tenant
        stream = stream_name(tenant, reply_id)
        try:
            stored = await self._find_reply(tenant, session_id, reply_id)
            model = (await self._store.get_session(tenant, session_id)).model
        except StoreUnavailable:
            # The store is down, but a reply still in Redis can be served: its stream is
            # named by the caller's tenant, so no other tenant's reply can be reached.
            if not await self._streams.read(stream):
                raise
            stored, model = None, self.default_model
        if stored is not None and not await self._streams.read(stream):
            # Finished long ago: the stream expired, the store still has the whole reply.
            return Relay(reply_id, model, self._replay(stored), {}, nothing)
        slot = await self._open(principal, new_id("attach"))
        return self._relays.open(principal, session_id, reply_id, model, after, slot)

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
        metrics.CANCELLATIONS.labels("client_request").inc()
        return True

    async def record(self, completion: Completion) -> MessageRecord | None:
        """Store a finished reply exactly once (see ``Replies``)."""
        return await self._replies.record(completion)

    async def consume_completions(self) -> None:
        # A blocking read every few seconds: spans of it would be noise, not turns.
        with tracing.quiet():
            await self._replies.consume()

    async def report_queues(self) -> None:
        """Export each served model's queue depth and consumers (runs until cancelled)."""
        with tracing.quiet():
            await QueueGauges(self._queue, list(self.models)).run()

    async def sweep_outbox(self) -> None:
        """Queue turns whose replica died before queueing them (runs until cancelled)."""
        with tracing.quiet():
            await self._outbox.run()

    async def close(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._relays.close()
