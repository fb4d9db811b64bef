"""Relaying one reply's token stream to its client: from after any event id to the final
event, with keep-alives, the time to first token, and what the reply held released when
the relay ends however it ends (client gone, error, shutdown): the stream slot, and the
token reservation settled with what the reply really used."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from axon.core.errors import AxonError, StoreUnavailable, Timeout
from axon.core.types import EventKind, FinishReason, Principal, StreamEvent, Usage, stream_name
from axon.observability import metrics, tracing
from axon.sessions.admission import Admission, Reservation, StreamSlot
from axon.sessions.load import LoadShedder
from axon.sessions.records import MessageRecord
from axon.streaming.base import Entry, TokenStreams, parse_id

log = logging.getLogger(__name__)

#: Longest a relay waits for the next entry before sending a keep-alive.
HEARTBEAT_S = 10.0

#: Stores a session turn's finished reply: (tenant, session, reply id, model, final event).
StoreReply = Callable[[str, str, str, str, StreamEvent], Awaitable[MessageRecord | None]]


@dataclass(frozen=True, slots=True)
class Final:
    """The last event of a reply, with the stored assistant message for session turns."""

    event_id: str | None
    event: StreamEvent
    message: MessageRecord | None


#: What a relay yields: a token entry, the final event, or None for a keep-alive.
Relayed = Entry | Final | None


class Relay:
    """An admitted request's stream. Holds the caller's open-stream slot (and, for a new
    request, its token reservation) until iteration ends or ``aclose`` is called; a relay
    abandoned before its final event cancels a stateless reply and settles the tokens
    once the reply ends."""

    def __init__(
        self,
        request_id: str,
        model: str,
        events: AsyncIterator[Relayed],
        headers: Mapping[str, str],
        cleanup: Callable[[], Awaitable[None]],
    ) -> None:
        self.request_id = request_id
        self.model = model
        self.headers = headers
        self._events = events
        self._cleanup = cleanup

    def __aiter__(self) -> AsyncIterator[Relayed]:
        return self._events

    async def final(self) -> Final:
        """Read to the final event (a caller that wants the whole reply, not a stream)."""
        final: Final | None = None
        try:
            async for item in self:
                if isinstance(item, Final):
                    final = item
        finally:
            await self.aclose()
        assert final is not None  # a relay ends only after its final event, or raises
        return final

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()
        await self._cleanup()


async def nothing() -> None:
    """The cleanup of a relay that holds nothing."""
    return None


def outcome(event: StreamEvent) -> str:
    """A finished turn's outcome for ``axon_turns_total``: an error event is the server's
    failure (the availability SLO's bad event); a cancelled reply was the client's choice."""
    if event.kind is EventKind.ERROR:
        return "error"
    return "cancelled" if event.finish_reason is FinishReason.CANCELLED else "ok"


@dataclass(slots=True)
class TurnMeter:
    """The bookkeeping of a new turn's relay (re-attaches do none): its stages are
    measured, and it is counted and logged once, when it ends."""

    model: str
    #: ``time.monotonic()`` when the request arrived, and when its job was queued.
    arrived: float
    queued: float
    #: Unix time the relay opened, for its span.
    opened_at: float = field(default_factory=time.time)
    first_token_s: float | None = None
    counted: bool = False

    def ended(self, event: StreamEvent | None, store_s: float | None = None) -> None:
        """Count and log the turn's end; ``event`` None when its end was never seen."""
        if self.counted:
            return
        self.counted = True
        result = "abandoned" if event is None else outcome(event)
        metrics.TURNS.labels(self.model, result).inc()
        fields: dict[str, object] = {
            "model": self.model,
            "outcome": result,
            "admit_s": round(self.queued - self.arrived, 6),
            "first_token_s": self.first_token_s,
            "total_s": round(time.monotonic() - self.arrived, 6),
        }
        if event is not None:
            usage = event.usage or Usage()
            fields.update(
                finish_reason=event.finish_reason.value if event.finish_reason else None,
                error_code=event.error_code,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                store_s=store_s,
            )
            if event.timings is not None:
                fields.update(event.timings.model_dump(exclude_none=True))
        # One line per turn, with where its time went; never its text.
        log.info("turn finished", extra=fields)
        tracing.record("axon.relay", self.opened_at, time.time())


class Relays:
    """Opens relays, and runs what must finish after their clients have gone."""

    def __init__(
        self,
        *,
        streams: TokenStreams,
        admission: Admission,
        load: LoadShedder,
        store_reply: StoreReply,
        timeout_s: float,
    ) -> None:
        self._streams = streams
        self._admission = admission
        self._load = load
        self._store_reply = store_reply
        self._timeout_s = timeout_s
        self._background_tasks: set[asyncio.Task[None]] = set()

    def open(
        self,
        principal: Principal,
        session_id: str | None,
        request_id: str,
        model: str,
        after: str | None,
        slot: StreamSlot,
        *,
        reservation: Reservation | None = None,
        turn: TurnMeter | None = None,
    ) -> Relay:
        """A relay from after ``after``. ``turn`` is given for a new turn's own relay,
        which measures, counts and logs it (a re-attach does none of that)."""
        tenant = principal.tenant
        finals: list[Final] = []
        cleaned = False

        async def release() -> None:
            await self._admission.close_stream(slot)
            if not finals and reservation is not None:
                if session_id is None:
                    # Nobody else reads a stateless reply: stop spending engine steps on it.
                    await self._cancel_quietly(tenant, request_id)
                self._settle_later(tenant, request_id, reservation, turn)

        async def cleanup() -> None:
            nonlocal cleaned
            if cleaned:
                return
            cleaned = True
            self._load.started(request_id)
            # Often called from a response whose client left: its task is being cancelled,
            # and the server's cancel scope would cancel every await here again. The
            # release runs as a task of its own, shielded, so it always completes.
            await asyncio.shield(self._background(release()))

        async def events() -> AsyncIterator[Relayed]:
            self._load.waiting(request_id, model)
            waiting = True
            try:
                async for item in self._entries(stream_name(tenant, request_id), after, turn):
                    if item is not None and waiting:
                        # Once per relay, not per entry: this loop is the per-token path.
                        self._load.started(request_id)
                        waiting = False
                    if item is None or not item[1].final:
                        yield item
                        continue
                    message = None
                    store_s = None
                    if session_id is not None:
                        storing = time.monotonic()
                        try:
                            message = await self._store_reply(
                                tenant, session_id, request_id, model, item[1]
                            )
                        except StoreUnavailable:
                            # The reply is safe in the completion log, which a completion
                            # consumer stores once the store is back: the client still
                            # gets its final event, without the stored message.
                            log.warning("store unavailable; the reply is stored later")
                        store_s = round(time.monotonic() - storing, 6)
                        metrics.TURN_STAGE.labels(model, "store").observe(store_s)
                    finals.append(Final(item[0], item[1], message))
                    if reservation is not None:
                        await self._settle(reservation, item[1])
                    if turn is not None:
                        turn.ended(item[1], store_s)
                    yield finals[0]
                    return
            finally:
                await cleanup()

        headers = reservation.headers if reservation is not None else {}
        return Relay(request_id, model, events(), headers, cleanup)

    async def _cancel_quietly(self, tenant: str, request_id: str) -> None:
        metrics.CANCELLATIONS.labels("client_disconnect").inc()
        try:
            await self._streams.cancel(stream_name(tenant, request_id))
        except AxonError:
            log.warning("could not cancel an abandoned reply")

    async def _settle(self, reservation: Reservation, event: StreamEvent) -> None:
        usage = event.usage or Usage()
        await self._admission.settle(reservation, usage.total_tokens)

    def _settle_later(
        self, tenant: str, request_id: str, reservation: Reservation, turn: TurnMeter | None
    ) -> None:
        """The client left before the reply ended: wait for the final event in the
        background and settle the reservation with what the reply really used (and count
        the turn by how it really ended)."""

        async def wait() -> None:
            try:
                async for item in self._entries(stream_name(tenant, request_id), None, None):
                    if item is not None and item[1].final:
                        await self._settle(reservation, item[1])
                        if turn is not None:
                            turn.ended(item[1])
                        return
            except AxonError:
                log.warning("could not settle an abandoned reply's tokens")
            if turn is not None:
                turn.ended(None)

        self._background(wait())

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` to completion whatever happens to the caller (closed on shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return task

    async def _entries(
        self, stream: str, after: str | None, turn: TurnMeter | None
    ) -> AsyncIterator[Entry | None]:
        """Read a stream from after ``after`` to its final event. Yields None as a
        keep-alive when nothing arrived for a while. For a new ``turn``, the time to its
        first token (from queueing) and each batch's lag behind its append are recorded."""
        deadline = time.monotonic() + self._timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("the reply did not finish in time")
            entries = await self._streams.read(stream, after, timeout_s=min(HEARTBEAT_S, remaining))
            if not entries:
                yield None
                continue
            # The first token, not a reply that failed before any: a quick error is no
            # quick answer.
            if turn is not None and turn.first_token_s is None and not entries[0][1].final:
                turn.first_token_s = round(time.monotonic() - turn.queued, 6)
                metrics.TURN_FIRST_TOKEN.labels(turn.model).observe(turn.first_token_s)
            for entry in entries:
                if turn is not None:
                    _observe_lag(entry[0])
                yield entry
                if entry[1].final:
                    return
            after = entries[-1][0]

    async def close(self) -> None:
        """Stop background settlements (their reservations then expire with the window)."""
        for task in list(self._background_tasks):
            task.cancel()
        await asyncio.gather(*self._background_tasks, return_exceptions=True)


def _observe_lag(entry_id: str) -> None:
    """How long ago the worker appended this entry (its id is Redis' clock in ms; a
    skewed clock shows as zero, never as a negative lag)."""
    try:
        appended_ms, _ = parse_id(entry_id)
    except ValueError:
        return
    metrics.RELAY_LAG.observe(max(0.0, time.time() - appended_ms / 1000))
