"""The session cache interface: the recent messages of a session, written through."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from axon.sessions.records import MessageRecord


def session_key(tenant: str, session_id: str) -> str:
    """A session's key in the cache: namespaced by the tenant the server derived."""
    return f"{tenant}/{session_id}"


class SessionCache(abc.ABC):
    """Holds at most ``max_messages`` of each session's newest messages, oldest first.
    A miss (``None``) means: read the store. The cache is never the system of record."""

    @abc.abstractmethod
    async def get(self, session_id: str) -> list[MessageRecord] | None: ...

    @abc.abstractmethod
    async def put(self, session_id: str, messages: Sequence[MessageRecord]) -> None:
        """Replace the cached window with the newest of ``messages``."""

    @abc.abstractmethod
    async def append(self, session_id: str, message: MessageRecord) -> None:
        """Add a message if the session is cached (a miss stays a miss), keeping the
        window sorted and free of duplicates."""

    @abc.abstractmethod
    async def invalidate(self, session_id: str) -> None: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class NoCache(SessionCache):
    async def get(self, session_id: str) -> list[MessageRecord] | None:
        return None

    async def put(self, session_id: str, messages: Sequence[MessageRecord]) -> None:
        return None

    async def append(self, session_id: str, message: MessageRecord) -> None:
        return None

    async def invalidate(self, session_id: str) -> None:
        return None
