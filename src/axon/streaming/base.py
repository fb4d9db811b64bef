"""The token stream interface.

Each request has a stream of ``StreamEvent`` entries with increasing ids
(``<milliseconds>-<sequence>``, as Redis Streams number them). Readers start after any id,
so a client that dropped re-attaches with ``Last-Event-ID`` and sees no gap and no repeat.
Finished requests are also appended to one completion log read through consumer groups,
so that exactly one session-manager replica stores each reply.

Workers own a reply through a *lease*: ``claim`` gives each delivery of a job the next
attempt number and a lease renewed by heartbeats. Only the current attempt may append
(checked atomically with the write), so a stale worker (paused, partitioned, stopping, or
running a duplicate delivery) cannot write; a lease that is not renewed in time is taken
over and its job published again, and a later claim continues the reply where it stopped.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from axon.core.types import Completion, StreamEvent

Entry = tuple[str, StreamEvent]


class Fenced(Exception):
    """This attempt no longer owns the reply: another attempt claimed it. Nothing was written."""


@dataclass(frozen=True, slots=True)
class Fence:
    """What a fenced append carries: the writer's attempt, and the UTF-8 length of the reply
    text before this batch. A batch whose offset is already behind the stream was written
    before (a retried call): it is skipped, never written twice."""

    attempt: int
    offset: int


class ClaimState(enum.Enum):
    OWNED = "owned"  # this delivery runs the job now
    BUSY = "busy"  # another attempt holds a live lease: wait, then claim again
    FINISHED = "finished"  # the final event is written: nothing left to run


@dataclass(frozen=True, slots=True)
class Claim:
    state: ClaimState
    #: This delivery's attempt number (OWNED only).
    attempt: int = 0
    #: Attempts that failed or died before finishing (the job's own delivery count).
    failures: int = 0


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; raise ``ValueError`` if malformed."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class TokenStreams(abc.ABC):
    @abc.abstractmethod
    async def append(
        self,
        request_id: str,
        events: Sequence[StreamEvent],
        fence: Fence | None = None,
        completion: Completion | None = None,
    ) -> str:
        """Append events (in one round trip) and return the id of the last one. A stream
        whose final event is appended expires ``ttl`` seconds later, and its lease ends.
        With ``fence``, raise ``Fenced`` unless ``fence.attempt`` is the current attempt.
        ``completion`` goes to the completion log in the same atomic step, so a reply whose
        final event exists is always recorded for storing."""

    @abc.abstractmethod
    async def claim(self, request_id: str, job: str, lease_s: float) -> Claim:
        """Take the reply's lease for a new attempt, unless its final event is written or
        another attempt's lease is live. ``job`` (the job as JSON) is kept so that a lease
        that expires can be published again. A claim that replaces an attempt that neither
        finished nor released counts that attempt as failed."""

    @abc.abstractmethod
    async def renew(self, leases: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        """Heartbeat: extend each (request id, attempt) lease; returns the request ids whose
        attempt is no longer current (their writer must stop)."""

    @abc.abstractmethod
    async def release(self, request_id: str, attempt: int, *, failed: bool) -> None:
        """End an attempt without a final event. ``failed`` counts it toward the job's
        delivery limit (the job's own failure); otherwise it was handed back (shutdown, an
        outage) and the next claim starts without penalty."""

    @abc.abstractmethod
    async def take_expired(self, limit: int = 32) -> list[str]:
        """Jobs (as JSON) whose lease expired (their worker stopped renewing it): each is
        fenced at once, its attempt counted as failed and its lease ended, and the caller
        publishes it again. Nothing is lost if the caller dies before publishing: the stale
        worker, once fenced, hands its own delivery back instead of acknowledging it."""

    @abc.abstractmethod
    async def read(
        self, request_id: str, after: str | None = None, *, timeout_s: float = 0.0
    ) -> list[Entry]:
        """Entries after ``after`` (from the start when None). Waits up to ``timeout_s`` for
        the first one when none is there yet; returns [] on timeout."""

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None:
        """Ask the worker running ``request_id`` to stop (it checks between steps)."""

    @abc.abstractmethod
    async def is_cancelled(self, request_id: str) -> bool: ...

    @abc.abstractmethod
    async def publish_completion(self, completion: Completion) -> None:
        """Record a finished request for the session managers to store."""

    @abc.abstractmethod
    async def read_completions(
        self, group: str, consumer: str, *, count: int = 32, timeout_s: float = 1.0
    ) -> list[tuple[str, Completion]]:
        """Completions not yet acknowledged in ``group``: first any this group delivered
        long ago to a consumer that never acknowledged them (a replica that died), then new
        ones. Each must be acknowledged with ``ack_completion`` once stored."""

    @abc.abstractmethod
    async def ack_completion(self, group: str, completion_id: str) -> None: ...

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise ``Unavailable`` if the backend cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
