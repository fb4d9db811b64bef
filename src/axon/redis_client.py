"""The one place that builds Redis clients (one server, or the primary that Sentinels name)
and maps "Redis cannot be reached" to Axon's error tree, shared by every Redis-backed seam
(streams, cache, rate limits)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon.config import BackendSettings
from axon.core.errors import ConfigError, Unavailable

Close = Callable[[], Awaitable[None]]

#: Connection options of every pool. A full pool makes a caller wait ``timeout`` seconds for
#: a connection, then fail as "Redis is unavailable": a short wait, never an unbounded
#: queue. Blocking stream reads wait up to 10 s, so reads may take that long; a dead server
#: is still noticed within the connect timeout and keepalives.
_POOL_OPTIONS: dict[str, Any] = {
    "timeout": 2,
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "socket_keepalive": True,
    "health_check_interval": 15,
}

#: Sentinels answer one small query each: a dead one must not hold up asking the next.
_SENTINEL_TIMEOUT_S = 2.0


@contextmanager
def unavailable() -> Iterator[None]:
    """Translate a lost, refused or timed-out Redis call into the retryable ``Unavailable``.

    ``ReadOnlyError`` is included because right after a failover a connection may still
    point at the demoted primary; a retry reaches the new one.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ReadOnlyError) as exc:
        raise Unavailable("Redis is unavailable") from exc


def retry_policy() -> Retry:
    """What a client does when a command fails on its connection.

    On every error listed, redis-py closes the connection (the next use opens a new one:
    a fresh DNS lookup, or a fresh question to the Sentinels), then sends the command again
    after a short pause, twice at most. ``ReadOnlyError`` is there for a primary that was
    demoted under a DNS name that now points elsewhere: left alone, the pool would keep
    handing out that connection, and every write on it would fail. Timeouts are not
    retried: the connection is closed anyway, but a blocking read has already waited the
    socket timeout, and waiting it again would hide an outage from the callers' own outage
    handling for that much longer.
    """
    return Retry(
        ExponentialWithJitterBackoff(base=0.05, cap=0.5),
        retries=2,
        supported_errors=(RedisConnectionError, ReadOnlyError),
    )


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A Sentinel-managed pool that, like ``BlockingConnectionPool``, makes a caller wait
    (a bounded time) for a free connection instead of failing at once when it is full."""


def sentinel_addresses(addresses: list[str]) -> list[tuple[str, int]]:
    """``host:port`` strings as (host, port) pairs; an address without a port gets
    Sentinel's 26379."""
    pairs = []
    for address in addresses:
        host, sep, port = address.strip().rpartition(":")
        if not sep:
            host, port = port, "26379"
        host = host.strip("[]")  # an IPv6 address in brackets
        if not host or not port.isdigit():
            raise ConfigError(f"a Redis Sentinel address must be host:port, not {address!r}")
        pairs.append((host, int(port)))
    return pairs


def connection_options(url: str) -> dict[str, Any]:
    """What of ``url`` applies to the primary that Sentinels name: credentials, database,
    TLS; the host and port come from the Sentinels."""
    options: dict[str, Any] = dict(parse_url(url))
    if "path" in options:
        raise ConfigError("Redis Sentinel needs a redis:// or rediss:// URL, not a socket path")
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        # The Sentinel pool picks its own TLS connection class from this flag.
        options["ssl"] = True
    return options


def make_client(backends: BackendSettings) -> tuple[Redis, Close]:
    """A client with a pool of its own, and the function that closes both.

    With ``redis_sentinels`` set, connections go to the primary the Sentinels name: a new
    connection asks them, and a pool that learns of a new primary drops its idle ones. A
    connection still open to the old primary fails (it is gone, or answers READONLY once
    demoted) and is replaced by one to the new primary on the retry.
    """
    if not backends.redis_sentinels:
        pool = BlockingConnectionPool.from_url(
            backends.redis_url,
            max_connections=backends.redis_max_connections,
            retry=retry_policy(),
            **_POOL_OPTIONS,
        )
        client = Redis(connection_pool=pool)

        async def close() -> None:
            await client.aclose()
            await pool.disconnect()

        return client, close

    options = connection_options(backends.redis_url)
    password = backends.redis_sentinel_password
    sentinel_options: dict[str, Any] = {
        "socket_timeout": _SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        # discover_master tries the next Sentinel on failure: retries here only delay it.
        "retry": Retry(NoBackoff(), 0),
        "password": password.get_secret_value() if password is not None else None,
        **{k: v for k, v in options.items() if k == "ssl" or k.startswith("ssl_")},
    }
    # redis-py leaves the Sentinel classes unannotated.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        sentinel_addresses(backends.redis_sentinels), sentinel_kwargs=sentinel_options
    )
    sentinel_pool = _BlockingSentinelPool(  # type: ignore[no-untyped-call]
        backends.redis_sentinel_master,
        sentinel,
        max_connections=backends.redis_max_connections,
        retry=retry_policy(),
        **_POOL_OPTIONS,
        **options,
    )
    sentinel_client = Redis(connection_pool=sentinel_pool)

    async def close_sentinel() -> None:
        await sentinel_client.aclose()
        await sentinel_pool.disconnect()
        await sentinel.aclose()

    return sentinel_client, close_sentinel
