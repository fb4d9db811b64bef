"""The token stream interface.

Each request has a stream of ``StreamEvent`` entries with increasing ids
(``<milliseconds>-<sequence>``, as Redis Streams number them). Readers start after any id,
so a client that dropped re-attaches with ``Last-Event-ID`` and sees no gap and no repeat.
Finished requests are also appended to one completion log read through consumer groups,
so that exactly one session-manager replica stores each reply.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from axon.core.types import Completion, StreamEvent

Entry = tuple[str, StreamEvent]


def parse_id(entry_id: str) -> tuple[int, int]:
    """``"1700000000000-3"`` -> ``(1700000000000, 3)``; raise ``ValueError`` if malformed."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class TokenStreams(abc.ABC):
    @abc.abstractmethod
    async def append(self, request_id: str, events: Sequence[StreamEvent]) -> str:
        """Append events (in one round trip) and return the id of the last one. A stream
        whose final event is appended expires ``ttl`` seconds later."""

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
