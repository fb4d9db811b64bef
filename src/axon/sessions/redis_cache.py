"""Session cache on Redis: the newest messages of each session, shared by every replica."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from pydantic import ValidationError
from redis.asyncio import Redis

from axon.core.errors import Unavailable
from axon.observability import metrics
from axon.redis_client import unavailable
from axon.sessions.cache import SessionCache
from axon.sessions.records import MessageRecord

# The hash of a cached session always holds this field, so that a cached session with no
# messages yet still exists (Redis deletes empty hashes) and "absent" always means a miss.
# Message ids are never empty, so it cannot collide with one.
_MARKER = ""

# Add a message only if the session is cached (a miss must stay a miss: the cache would
# otherwise claim a history that holds just this one message). Keyed by message id in
# the hash and ordered by seq in the sorted set, so a message written twice stays once.
# KEYS: messages hash, order zset. ARGV: id, json, seq, max_messages, ttl_s.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  redis.call('HDEL', KEYS[1], unpack(oldest))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextmanager
def _call(operation: str) -> Iterator[None]:
    """One Redis call of the cache: timed, a failure counted and raised as ``Unavailable``."""
    started = time.perf_counter()
    try:
        with unavailable():
            yield
    except Unavailable:
        metrics.CACHE_ERRORS.labels(operation).inc()
        raise
    finally:
        metrics.CACHE_DURATION.labels(operation).observe(time.perf_counter() - started)


class RedisSessionCache(SessionCache):
    """Per session a hash ``message id -> MessageRecord JSON`` and a sorted set of ids scored
    by ``seq``; both expire ``ttl_s`` after the last write. The caller owns ``client``.

    Errors reaching Redis raise ``Unavailable``; a caller may treat a failed ``get`` as a
    miss, since the store holds the truth.
    """

    def __init__(self, client: Redis, *, prefix: str, max_messages: int, ttl_s: int) -> None:
        self._client = client
        self._prefix = prefix
        self._max_messages = max_messages
        self._ttl_s = ttl_s
        self._append = client.register_script(_APPEND)

    def _keys(self, session_id: str) -> tuple[str, str]:
        # The hash tag keeps both keys in one slot, which the Lua script needs on a cluster.
        base = f"{self._prefix}session:{{{session_id}}}"
        return f"{base}:messages", f"{base}:order"

    async def get(self, session_id: str) -> list[MessageRecord] | None:
        messages_key, order_key = self._keys(session_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.hgetall(messages_key)
            pipe.zrange(order_key, 0, -1)
            with _call("get"):
                raw, order = await pipe.execute()
        if not raw:
            return None
        by_id = {_text(k): v for k, v in raw.items()}
        try:
            return [
                MessageRecord.model_validate_json(by_id[message_id])
                for message_id in map(_text, order)
                if message_id in by_id
            ]
        except ValidationError:
            # Written by another version of Axon: a miss is always safe.
            await self.invalidate(session_id)
            return None

    async def put(self, session_id: str, messages: Sequence[MessageRecord]) -> None:
        unique = {m.id: m for m in messages}
        window = sorted(unique.values(), key=lambda m: m.seq)[-self._max_messages :]
        messages_key, order_key = self._keys(session_id)
        # MULTI: a reader sees the old window or the new one, never a mix.
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(messages_key, order_key)
            pipe.hset(
                messages_key,
                mapping={_MARKER: "", **{m.id: m.model_dump_json() for m in window}},
            )
            if window:
                pipe.zadd(order_key, {m.id: m.seq for m in window})
                pipe.expire(order_key, self._ttl_s)
            pipe.expire(messages_key, self._ttl_s)
            with _call("put"):
                await pipe.execute()

    async def append(self, session_id: str, message: MessageRecord) -> None:
        with _call("append"):
            await self._append(
                keys=list(self._keys(session_id)),
                args=[
                    message.id,
                    message.model_dump_json(),
                    message.seq,
                    self._max_messages,
                    self._ttl_s,
                ],
            )

    async def invalidate(self, session_id: str) -> None:
        with _call("invalidate"):
            await self._client.delete(*self._keys(session_id))
