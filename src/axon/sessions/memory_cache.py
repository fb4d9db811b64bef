"""In-process session cache for the embedded default."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

from axon.sessions.cache import SessionCache
from axon.sessions.records import MessageRecord


class MemorySessionCache(SessionCache):
    def __init__(
        self, max_messages: int = 20, ttl_s: float = 3600.0, max_sessions: int = 10_000
    ) -> None:
        self.max_messages = max_messages
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._data: OrderedDict[str, tuple[float, list[MessageRecord]]] = OrderedDict()

    async def get(self, session_id: str) -> list[MessageRecord] | None:
        item = self._data.get(session_id)
        if item is None or item[0] < time.monotonic():
            self._data.pop(session_id, None)
            return None
        self._data.move_to_end(session_id)
        return list(item[1])

    async def put(self, session_id: str, messages: Sequence[MessageRecord]) -> None:
        window = sorted(messages, key=lambda m: m.seq)[-self.max_messages :]
        self._data[session_id] = (time.monotonic() + self.ttl_s, window)
        self._data.move_to_end(session_id)
        while len(self._data) > self.max_sessions:
            self._data.popitem(last=False)

    async def append(self, session_id: str, message: MessageRecord) -> None:
        cached = await self.get(session_id)
        if cached is None:
            return
        merged = {m.id: m for m in cached}
        merged[message.id] = message
        await self.put(session_id, list(merged.values()))

    async def invalidate(self, session_id: str) -> None:
        self._data.pop(session_id, None)
