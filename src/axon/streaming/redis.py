"""Token streams on Redis Streams: one stream per request, a cancel flag and a lease per
request, and one completion stream that session managers read through a consumer group.

Leases, fencing and takeover are Lua scripts: each check and the write it guards are one
atomic step on the server, and the server's clock decides expiry, so workers' clocks may
disagree."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from axon.core.types import Completion, StreamEvent
from axon.redis_client import unavailable
from axon.streaming.base import Claim, ClaimState, Entry, Fence, Fenced, TokenStreams

log = logging.getLogger(__name__)

# One field per entry keeps XADD and parsing cheap: this is the per-token hot path.
_EVENT, _EVENT_B = "e", b"e"
_COMPLETION, _COMPLETION_B = "c", b"c"

RawEntry = tuple[Any, dict[Any, Any] | None]

_NOW_MS = "local t = redis.call('TIME') local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

# KEYS: stream, lease, leases, completions. ARGV: attempt ('' when unfenced), offset, bytes,
# final, maxlen, active ttl, final ttl, request id, completion ('' for none), completions
# maxlen, events... Returns {status, id}: 1 written, 0 fenced, 2 already written (a retried
# batch, or the reply already ended).
_APPEND = """
local fenced = ARGV[1] ~= ''
if fenced and redis.call('HGET', KEYS[2], 'attempt') ~= ARGV[1] then return {0, ''} end
-- A reply has one final event: whatever comes after it (a late writer) is dropped.
if redis.call('HGET', KEYS[2], 'final') == '1' then return {2, ''} end
if fenced then
  local written = tonumber(redis.call('HGET', KEYS[2], 'offset') or '0')
  if ARGV[4] == '0' and tonumber(ARGV[2]) < written then return {2, ''} end
end
local id = ''
for i = 11, #ARGV do
  id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[5], '*', 'e', ARGV[i])
end
if ARGV[9] ~= '' then
  redis.call('XADD', KEYS[4], 'MAXLEN', ARGV[10], '*', 'c', ARGV[9])
end
if ARGV[4] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[7])
  redis.call('HSET', KEYS[2], 'final', '1', 'open', '0')
  redis.call('EXPIRE', KEYS[2], ARGV[7])
  redis.call('ZREM', KEYS[3], ARGV[8])
else
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if fenced then redis.call('HINCRBY', KEYS[2], 'offset', ARGV[3]) end
end
return {1, id}
"""

# KEYS: lease, leases. ARGV: request id, job, lease ms, active ttl.
_CLAIM = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'final') == '1' then return {'finished', 0, 0} end
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if redis.call('HGET', KEYS[1], 'open') == '1' then
  local expiry = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if expiry and tonumber(expiry) > now then return {'busy', 0, failures} end
  -- The last attempt neither finished nor released: it died, and that counts.
  failures = failures + 1
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)
redis.call('HSET', KEYS[1], 'open', '1', 'failures', failures, 'job', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return {'owned', attempt, failures}
"""
)

# KEYS: leases. ARGV: lease ms, lease key prefix, then (request id, attempt) pairs.
_RENEW = (
    _NOW_MS
    + """
local fenced = {}
for i = 3, #ARGV, 2 do
  local key = ARGV[2] .. ARGV[i]
  local current = redis.call('HGET', key, 'attempt') == ARGV[i + 1]
  if current and redis.call('HGET', key, 'open') == '1' then
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
  else
    table.insert(fenced, ARGV[i])
  end
end
return fenced
"""
)

# KEYS: lease, leases. ARGV: request id, attempt, failed ('1' or '0').
_RELEASE = """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[2] then return 0 end
if redis.call('HGET', KEYS[1], 'open') ~= '1' then return 0 end
redis.call('HSET', KEYS[1], 'open', '0')
if ARGV[3] == '1' then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: leases. ARGV: limit, lease key prefix.
_TAKE_EXPIRED = (
    _NOW_MS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local jobs = {}
for _, rid in ipairs(due) do
  redis.call('ZREM', KEYS[1], rid)
  local key = ARGV[2] .. rid
  if redis.call('HGET', key, 'open') == '1' then
    redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HINCRBY', key, 'failures', 1)
    redis.call('HSET', key, 'open', '0')
    local job = redis.call('HGET', key, 'job')
    if job then table.insert(jobs, job) end
  end
end
return jobs
"""
)


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
        self._leases_key = f"{prefix}leases"
        self._append = client.register_script(_APPEND)
        self._claim_script = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_expired = client.register_script(_TAKE_EXPIRED)
        self._groups: set[str] = set()
        # XAUTOCLAIM scans the pending list a page at a time; keep each group's cursor so
        # that old entries deep in a long pending list are reached too.
        self._claim_cursor: dict[str, str] = {}

    def _stream_key(self, request_id: str) -> str:
        return f"{self._prefix}stream:{request_id}"

    def _cancel_key(self, request_id: str) -> str:
        return f"{self._prefix}cancel:{request_id}"

    def _lease_key(self, request_id: str) -> str:
        return f"{self._prefix}lease:{request_id}"

    async def append(
        self,
        request_id: str,
        events: Sequence[StreamEvent],
        fence: Fence | None = None,
        completion: Completion | None = None,
    ) -> str:
        if not events:
            return ""
        final = any(event.final for event in events)
        text_bytes = sum(len(event.text.encode()) for event in events if not event.final)
        # One script: the fence check and the batch are one atomic step, so a connection
        # lost mid-batch cannot leave half a batch, readers never see half a batch, and a
        # retried batch (its offset already passed) is not written twice.
        args: list[Any] = [
            "" if fence is None else fence.attempt,
            0 if fence is None else fence.offset,
            text_bytes,
            int(final),
            self._maxlen,
            self._active_ttl_s,
            self._ttl_s,
            request_id,
            "" if completion is None else completion.model_dump_json(),
            self._completions_maxlen,
            *(event.model_dump_json() for event in events),
        ]
        keys = [
            self._stream_key(request_id),
            self._lease_key(request_id),
            self._leases_key,
            self._completions_key,
        ]
        with unavailable():
            status, entry_id = await self._append(keys=keys, args=args)
        if int(status) == 0:
            raise Fenced(request_id)
        return _text(entry_id)

    async def claim(self, request_id: str, job: str, lease_s: float) -> Claim:
        keys = [self._lease_key(request_id), self._leases_key]
        args: list[str | int] = [request_id, job, int(lease_s * 1000), self._active_ttl_s]
        with unavailable():
            state, attempt, failures = await self._claim_script(keys=keys, args=args)
        return Claim(ClaimState(_text(state)), int(attempt), int(failures))

    async def renew(self, leases: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        if not leases:
            return set()
        args: list[Any] = [int(lease_s * 1000), self._lease_key("")]
        for request_id, attempt in leases:
            args += [request_id, attempt]
        with unavailable():
            fenced = await self._renew(keys=[self._leases_key], args=args)
        return {_text(request_id) for request_id in fenced}

    async def release(self, request_id: str, attempt: int, *, failed: bool) -> None:
        keys = [self._lease_key(request_id), self._leases_key]
        with unavailable():
            await self._release(keys=keys, args=[request_id, attempt, int(failed)])

    async def take_expired(self, limit: int = 32) -> list[str]:
        with unavailable():
            jobs = await self._take_expired(
                keys=[self._leases_key], args=[limit, self._lease_key("")]
            )
        return [_text(job) for job in jobs]

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
