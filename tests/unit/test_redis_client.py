"""How Redis clients are built from settings: one server, or the primary that Sentinels
name, and what a client does with a connection that failed (no server needed)."""

from __future__ import annotations

import pytest
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from axon.config import BackendSettings, Settings
from axon.core.errors import ConfigError, Unavailable
from axon.redis_client import (
    connection_options,
    make_client,
    retry_policy,
    sentinel_addresses,
    unavailable,
)


def test_sentinel_addresses() -> None:
    assert sentinel_addresses(["a:26380", " b:1 ", "c", "[::1]:5000"]) == [
        ("a", 26380),
        ("b", 1),
        ("c", 26379),
        ("::1", 5000),
    ]


@pytest.mark.parametrize("address", ["a:port", ":26379", ""])
def test_a_malformed_sentinel_address_is_a_config_error(address: str) -> None:
    with pytest.raises(ConfigError):
        sentinel_addresses([address])


def test_with_sentinels_the_url_gives_credentials_database_and_tls_only() -> None:
    options = connection_options("rediss://u:pw@ignored:1/3?ssl_cert_reqs=none")
    assert options == {
        "username": "u",
        "password": "pw",
        "db": 3,
        "ssl": True,
        "ssl_cert_reqs": "none",
    }
    assert connection_options("redis://127.0.0.1:6379/0") == {"db": 0}


def test_sentinels_cannot_name_a_socket_path() -> None:
    with pytest.raises(ConfigError):
        connection_options("unix:///run/redis.sock")


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        # A demoted primary: drop the connection, try again on a new one.
        (ReadOnlyError, 3),
        (RedisConnectionError, 3),
        # A timed-out blocking read has waited long enough; it is not sent again.
        (RedisTimeoutError, 1),
    ],
)
async def test_the_retry_policy(error: type[Exception], attempts: int) -> None:
    calls = dropped = 0

    async def command() -> None:
        nonlocal calls
        calls += 1
        raise error("failed")

    async def drop_connection(_: Exception) -> None:
        nonlocal dropped
        dropped += 1

    with pytest.raises(error):
        await retry_policy().call_with_retry(command, drop_connection)
    assert calls == attempts
    # redis-py closes the connection on each retried error; a new one is opened for the next.
    assert dropped == (attempts if attempts > 1 else 0)


async def test_one_server_a_blocking_pool_with_the_retry_policy() -> None:
    client, close = make_client(BackendSettings(redis_url="redis://:pw@h:1/2"))
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool)
        assert not isinstance(pool, SentinelConnectionPool)
        assert pool.connection_kwargs["host"] == "h"
        assert pool.connection_kwargs["retry"] == retry_policy()
    finally:
        await close()


async def test_sentinel_settings_give_a_blocking_sentinel_pool() -> None:
    backends = BackendSettings(
        redis_url="rediss://:data-pw@ignored:1/4",
        redis_sentinels=["s1:26379", "s2:26380"],
        redis_sentinel_master="cache",
        redis_sentinel_password="sentinel-pw",  # type: ignore[arg-type]
        redis_max_connections=7,
    )
    client, close = make_client(backends)
    try:
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        # Full pool: wait (bounded) for a connection, as the single-server pool does.
        assert isinstance(pool, BlockingConnectionPool)
        assert (pool.max_connections, pool.timeout) == (7, 2)
        assert pool.service_name == "cache"
        assert pool.is_master
        assert pool.connection_class is SentinelManagedSSLConnection
        assert pool.connection_kwargs["password"] == "data-pw"
        assert pool.connection_kwargs["db"] == 4
        assert pool.connection_kwargs["retry"] == retry_policy()
        sentinels = pool.sentinel_manager.sentinels
        assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
        kwargs = sentinels[0].connection_pool.connection_kwargs
        assert kwargs["password"] == "sentinel-pw"
        # A dead Sentinel is skipped quickly, never retried.
        assert kwargs["socket_connect_timeout"] == 2.0
        assert isinstance(kwargs["retry"], Retry)
        assert kwargs["retry"].get_retries() == 0
    finally:
        await close()


def test_sentinel_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXON_BACKENDS__REDIS_SENTINELS", '["s1:26379","s2:26379"]')
    monkeypatch.setenv("AXON_BACKENDS__REDIS_SENTINEL_MASTER", "axon")
    monkeypatch.setenv("AXON_BACKENDS__RABBITMQ_URLS", '["amqp://a/","amqp://b/"]')
    backends = Settings().backends
    assert backends.redis_sentinels == ["s1:26379", "s2:26379"]
    assert backends.redis_sentinel_master == "axon"
    assert backends.rabbitmq_urls == ["amqp://a/", "amqp://b/"]


@pytest.mark.parametrize(
    "error",
    [RedisConnectionError("refused"), RedisTimeoutError("slow"), ReadOnlyError("READONLY")],
)
def test_unavailable_is_the_one_mapping(error: Exception) -> None:
    with pytest.raises(Unavailable), unavailable():
        raise error
