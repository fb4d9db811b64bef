"""Token streams on Redis Streams: one stream per request, a cancel flag per request, and one
completion stream that session managers read through a consumer group."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from axon.core.types import Completion, StreamEvent
from axon.redis_client import unavailable
from axon.streaming.base import Entry, TokenStreams

log = logging.getLogger(__name__)

# One field per entry keeps XADD and parsing cheap: this is the per-token hot path.
_EVENT, _EVENT_B = "e", b"e"
_COMPLETION, _COMPLETION_B = "c", b"c"

RawEntry = tuple[Any, dict[Any, Any] | None]


def _text(value: bytes | str) -> str:
    # The caller builds the client, with or without ``decode_responses``: accept both.
    return value.decode() if isinstance(value, bytes) else value


def _block_ms(timeout_s: float) -> int | None:
    # BLOCK 0 means "wait forever" to Redis, so a tiny positive timeout must stay positive.
    return max(1, int(timeout_s * 1000)) if timeout_s > 0 else None


def _entries(response: Any) -> list[RawEntry]:
    """The entries of the single stream an XREAD/XREADGROUP asked for, for either protocol:
    RESP2 answers ``[[name, entries]]``, RESP3 ``{name: [entries]}``."""
    if not response:
        return []
    if isinstance(response, dict):
        (entries,) = response.values()
        if entries and isinstance(entries[0], list):
            entries = entries[0]
        return list(entries)
    return list(response[0][1])


def _field(fields: dict[Any, Any], name: str, name_b: bytes) -> Any:
    value = fields.get(name_b)
    return fields[name] if value is None else value


class RedisTokenStreams(TokenStreams):
    """Token streams, cancel flags and the completion log on Redis.

    ``client`` is built and closed by the caller. Its ``socket_timeout`` (if any) must be
    longer than the longest blocking read, or blocking reads fail as ``Unavailable``.

    ``active_ttl_s`` is the expiry of a stream still being written, refreshed on every
    append, so that a stream whose worker died eventually disappears; it must outlast a
    redelivered job's wait in the queue (at least the request timeout). ``ttl_s`` applies
    once the final event is written: how long a finished answer stays readable for resume.
    """

    def __init__(
        self,
        client: Redis,
        *,
        prefix: str,
        ttl_s: int,
        maxlen: int,
        active_ttl_s: int = 3600,
        claim_after_ms: int = 30_000,
        completions_maxlen: int = 100_000,
    ) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_s = ttl_s
        self._active_ttl_s = max(active_ttl_s, ttl_s)
        self._maxlen = maxlen
        self.claim_after_ms = claim_after_ms
        self._completions_maxlen = completions_maxlen
        self._completions_key = f"{prefix}completions"
        self._groups: set[str] = set()
        # XAUTOCLAIM scans the pending list a page at a time; keep each group's cursor so
        # that old entries deep in a long pending list are reached too.
        self._claim_cursor: dict[str, str] = {}

    def _stream_key(self, request_id: str) -> str:
        return f"{self._prefix}stream:{request_id}"

    def _cancel_key(self, request_id: str) -> str:
        return f"{self._prefix}cancel:{request_id}"

    async def append(self, request_id: str, events: Sequence[StreamEvent]) -> str:
        if not events:
            return ""
        key = self._stream_key(request_id)
        final = False
        # One round trip. MULTI/EXEC costs next to nothing on top and makes the batch all or
        # nothing: a connection lost mid-batch (which the client may retry) cannot leave
        # half a batch behind to be written twice, and readers never see half a batch.
        async with self._client.pipeline(transaction=True) as pipe:
            for event in events:
                pipe.xadd(key, {_EVENT: event.model_dump_json()}, maxlen=self._maxlen)
                final = final or event.final
            pipe.expire(key, self._ttl_s if final else self._active_ttl_s)
            with unavailable():
                results = await pipe.execute()
        return _text(results[-2])

    async def read(
        self, request_id: str, after: str | None = None, *, timeout_s: float = 0.0
    ) -> list[Entry]:
        key = self._stream_key(request_id)
        with unavailable():
            response = await self._client.xread({key: after or "0-0"}, block=_block_ms(timeout_s))
        return [
            (_text(entry_id), StreamEvent.model_validate_json(_field(fields, _EVENT, _EVENT_B)))
            for entry_id, fields in _entries(response)
            if fields is not None
        ]

    async def cancel(self, request_id: str) -> None:
        with unavailable():
            await self._client.set(self._cancel_key(request_id), 1, ex=self._active_ttl_s)

    async def is_cancelled(self, request_id: str) -> bool:
        with unavailable():
            return bool(await self._client.exists(self._cancel_key(request_id)))

    async def publish_completion(self, completion: Completion) -> None:
        with unavailable():
            await self._client.xadd(
                self._completions_key,
                {_COMPLETION: completion.model_dump_json()},
                maxlen=self._completions_maxlen,
            )

    async def _ensure_group(self, group: str) -> None:
        if group in self._groups:
            return
        try:
            # From id 0: a new group sees every completion still in the log. Storing a
            # reply is idempotent (keyed by request id), so seeing an old one is harmless.
            await self._client.xgroup_create(self._completions_key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._groups.add(group)

    async def _claim(self, group: str, consumer: str, count: int) -> list[RawEntry]:
        """Take over entries that another consumer received and never acknowledged."""
        response = await self._client.xautoclaim(
            self._completions_key,
            group,
            consumer,
            self.claim_after_ms,
            start_id=self._claim_cursor.get(group, "0-0"),
            count=count,
        )
        self._claim_cursor[group] = _text(response[0])
        # Entries trimmed away by MAXLEN come back without fields (or not at all on Redis 7).
        return [entry for entry in response[1] if entry[1] is not None]

    async def _read_group(
        self, group: str, consumer: str, count: int, timeout_s: float
    ) -> list[RawEntry]:
        await self._ensure_group(group)
        claimed = await self._claim(group, consumer, count)
        if len(claimed) >= count:
            return claimed
        response = await self._client.xreadgroup(
            group,
            consumer,
            {self._completions_key: ">"},
            count=count - len(claimed),
            # Do not sit on reclaimed entries while waiting for new ones.
            block=None if claimed else _block_ms(timeout_s),
        )
        return claimed + [entry for entry in _entries(response) if entry[1] is not None]

    async def read_completions(
        self, group: str, consumer: str, *, count: int = 32, timeout_s: float = 1.0
    ) -> list[tuple[str, Completion]]:
        with unavailable():
            try:
                raw = await self._read_group(group, consumer, count, timeout_s)
            except ResponseError as exc:
                # The stream (and its groups) vanished, e.g. a flush or a fresh replica
                # after failover: create the group again and retry once.
                if "NOGROUP" not in str(exc):
                    raise
                self._groups.discard(group)
                self._claim_cursor.pop(group, None)
                raw = await self._read_group(group, consumer, count, timeout_s)
        out: list[tuple[str, Completion]] = []
        for entry_id, fields in raw:
            completion_id = _text(entry_id)
            try:
                completion = Completion.model_validate_json(
                    _field(fields or {}, _COMPLETION, _COMPLETION_B)
                )
            except (KeyError, ValidationError):
                # A poison entry would be reclaimed forever; drop it loudly instead.
                log.error(
                    "dropping an undecodable completion", extra={"completion_id": completion_id}
                )
                await self.ack_completion(group, completion_id)
                continue
            out.append((completion_id, completion))
        return out

    async def ack_completion(self, group: str, completion_id: str) -> None:
        with unavailable():
            await self._client.xack(self._completions_key, group, completion_id)

    async def ping(self) -> None:
        with unavailable():
            await self._client.ping()
