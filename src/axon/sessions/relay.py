"""Relaying one reply's token stream to its client: from after any event id to the final
event, with keep-alives, the time to first token, and what the reply held released when
the relay ends however it ends (client gone, error, shutdown): the stream slot, and the
token reservation settled with what the reply really used."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from axon.core.errors import AxonError, StoreUnavailable, Timeout
from axon.core.types import Principal, StreamEvent, Usage, stream_name
from axon.observability import metrics
from axon.sessions.admission import Admission, Reservation, StreamSlot
from axon.sessions.load import LoadShedder
from axon.sessions.records import MessageRecord
from axon.streaming.base import Entry, TokenStreams

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
        measure: bool = False,
    ) -> Relay:
        tenant = principal.tenant
        finals: list[Final] = []
        cleaned = False

        async def release() -> None:
            await self._admission.close_stream(slot)
            if not finals and reservation is not None:
                if session_id is None:
                    # Nobody else reads a stateless reply: stop spending engine steps on it.
                    await self._cancel_quietly(tenant, request_id)
                self._settle_later(tenant, request_id, reservation)

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
                async for item in self._entries(stream_name(tenant, request_id), after, measure):
                    if item is not None and waiting:
                        # Once per relay, not per entry: this loop is the per-token path.
                        self._load.started(request_id)
                        waiting = False
                    if item is None or not item[1].final:
                        yield item
                        continue
                    message = None
                    if session_id is not None:
                        try:
                            message = await self._store_reply(
                                tenant, session_id, request_id, model, item[1]
                            )
                        except StoreUnavailable:
                            # The reply is safe in the completion log, which a completion
                            # consumer stores once the store is back: the client still
                            # gets its final event, without the stored message.
                            log.warning("store unavailable; the reply is stored later")
                    finals.append(Final(item[0], item[1], message))
                    if reservation is not None:
                        await self._settle(reservation, item[1])
                    yield finals[0]
                    return
            finally:
                await cleanup()

        headers = reservation.headers if reservation is not None else {}
        return Relay(request_id, model, events(), headers, cleanup)

    async def _cancel_quietly(self, tenant: str, request_id: str) -> None:
        try:
            await self._streams.cancel(stream_name(tenant, request_id))
        except AxonError:
            log.warning("could not cancel an abandoned reply")

    async def _settle(self, reservation: Reservation, event: StreamEvent) -> None:
        usage = event.usage or Usage()
        await self._admission.settle(reservation, usage.total_tokens)

    def _settle_later(self, tenant: str, request_id: str, reservation: Reservation) -> None:
        """The client left before the reply ended: wait for the final event in the
        background and settle the reservation with what the reply really used."""

        async def wait() -> None:
            try:
                async for item in self._entries(stream_name(tenant, request_id), None, False):
                    if item is not None and item[1].final:
                        await self._settle(reservation, item[1])
                        return
            except AxonError:
                log.warning("could not settle an abandoned reply's tokens")

        self._background(wait())

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` to completion whatever happens to the caller (closed on shutdown)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)
        return task

    async def _entries(
        self, stream: str, after: str | None, measure: bool
    ) -> AsyncIterator[Entry | None]:
        """Read a stream from after ``after`` to its final event. Yields None as a
        keep-alive when nothing arrived for a while. With ``measure``, the time to the
        first token (from this call) is recorded."""
        started = time.monotonic()
        deadline = started + self._timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Timeout("the reply did not finish in time")
            entries = await self._streams.read(stream, after, timeout_s=min(HEARTBEAT_S, remaining))
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

    async def close(self) -> None:
        """Stop background settlements (their reservations then expire with the window)."""
        for task in list(self._background_tasks):
            task.cancel()
        await asyncio.gather(*self._background_tasks, return_exceptions=True)
