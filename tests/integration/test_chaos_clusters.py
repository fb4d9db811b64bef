"""The clustered datastores that fault-injection tests start for themselves really fail
over: Sentinel promotes the Redis replica, the PostgreSQL standby replays and takes writes
once promoted, a quorum queue keeps a confirmed message through the loss of its leader, and
the proxy partitions and heals a connection.

Each test prints how long its cluster took to start (shown with ``pytest -s``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from support.clusters import (
    BlackholeProxy,
    ClusterUnavailable,
    PostgresPair,
    RabbitCluster,
    RedisSentinelGroup,
    redis_command,
)
from support.services import missing

pytestmark = pytest.mark.integration

C = TypeVar("C", RedisSentinelGroup, PostgresPair, RabbitCluster)


@contextmanager
def started(factory: Callable[[], C]) -> Iterator[C]:
    try:
        cluster = factory()
    except ClusterUnavailable as exc:
        missing(str(exc))
    with cluster:
        print(f"\n{type(cluster).__name__} started in {cluster.startup_seconds:.1f} s")
        yield cluster


@pytest.fixture
def redis_group() -> Iterator[RedisSentinelGroup]:
    with started(RedisSentinelGroup) as group:
        yield group


@pytest.fixture
def postgres_pair() -> Iterator[PostgresPair]:
    with started(PostgresPair) as pair:
        yield pair


@pytest.fixture
def rabbit_cluster() -> Iterator[RabbitCluster]:
    with started(RabbitCluster) as cluster:
        yield cluster


async def test_sentinel_promotes_the_replica(redis_group: RedisSentinelGroup) -> None:
    import redis.asyncio as redis

    from axon.config import BackendSettings
    from axon.redis_client import make_client

    group = redis_group
    primary = redis.Redis(port=group.primary_port)
    await primary.set("before", "1")
    await primary.aclose()
    # WAIT returns once the replica has acknowledged the write: it survives the failover.
    assert redis_command(group.primary_port, "WAIT", 1, 5000) == 1

    began = time.monotonic()
    old = group.kill_primary()
    new = await asyncio.to_thread(group.wait_promoted, 30.0)
    print(f"Sentinel promoted the replica {time.monotonic() - began:.1f} s after the kill")
    assert new == group.original_replica_port

    promoted = redis.Redis(port=new)
    await promoted.set("after", "2")
    assert await promoted.get("before") == b"1"
    await promoted.aclose()

    # Axon's own client, configured with the Sentinels, finds the new primary.
    client, close = make_client(
        BackendSettings(
            redis_sentinels=group.sentinel_addresses, redis_sentinel_master=group.master_name
        )
    )
    try:
        assert await client.get("after") == b"2"
    finally:
        await close()

    began = time.monotonic()
    assert await asyncio.to_thread(group.restart_old_primary) == old
    print(f"the old primary rejoined as a replica in {time.monotonic() - began:.1f} s")
    assert group.role(old) == "slave"


async def test_standby_replays_then_takes_over(postgres_pair: PostgresPair) -> None:
    import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

    pair = postgres_pair
    primary = await asyncpg.connect(pair.primary_dsn)
    await primary.execute("CREATE TABLE chaos (id int PRIMARY KEY, note text)")
    await primary.execute("INSERT INTO chaos VALUES (1, 'before')")
    await primary.close()

    async def standby_rows() -> int:
        standby = await asyncpg.connect(pair.standby_dsn)
        try:
            assert await standby.fetchval("SELECT pg_is_in_recovery()") is True
            count: int = await standby.fetchval(
                "SELECT count(*) FROM pg_class WHERE relname = 'chaos'"
            )
            return int(await standby.fetchval("SELECT count(*) FROM chaos")) if count else 0
        finally:
            await standby.close()

    async def wait_rows(expected: int) -> None:
        for _ in range(100):
            if await standby_rows() == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the standby never replayed {expected} rows")

    await wait_rows(1)

    # A clean outage of the primary: the standby reconnects and goes on replaying.
    await asyncio.to_thread(pair.stop_primary)
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pair.primary_dsn)
    await asyncio.to_thread(pair.start_primary)
    await asyncio.to_thread(pair.wait_streaming)
    primary = await asyncpg.connect(pair.primary_dsn)
    await primary.execute("INSERT INTO chaos VALUES (2, 'after the outage')")
    await primary.close()
    await wait_rows(2)

    began = time.monotonic()
    pair.kill_primary()
    await asyncio.to_thread(pair.promote_standby)
    print(f"the standby was promoted {time.monotonic() - began:.1f} s after the kill")

    # The multi-host DSN skips the dead primary and lands on the promoted standby.
    conn = await asyncpg.connect(pair.dsn)
    try:
        assert await conn.fetchval("SELECT inet_server_port()") == pair.standby_port
        await conn.execute("INSERT INTO chaos VALUES (3, 'after the failover')")
        rows = await conn.fetch("SELECT id FROM chaos ORDER BY id")
        assert [row["id"] for row in rows] == [1, 2, 3]
    finally:
        await conn.close()


async def test_quorum_queue_survives_its_leader(rabbit_cluster: RabbitCluster) -> None:
    import aio_pika

    cluster = rabbit_cluster
    assert sorted(cluster.running_nodes(0)) == sorted(cluster.node_names)
    name = "chaos.quorum"
    connection = await aio_pika.connect(cluster.url(0))
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        # With confirms on, publish returns once a majority of the queue's members hold it.
        await channel.default_exchange.publish(
            aio_pika.Message(b"survivor", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=name,
        )

    queues = json.loads(cluster.ctl(1, "list_queues", "name", "leader", "--formatter", "json"))
    leader = cluster.node_names.index(next(q["leader"] for q in queues if q["name"] == name))
    other = (leader + 1) % cluster.size
    began = time.monotonic()
    cluster.kill_node(leader)

    body = None
    # Until the surviving members elect a new leader, a get fails with ``nodedown`` and the
    # broker closes the whole connection: each try starts afresh.
    for _ in range(60):
        try:
            connection = await aio_pika.connect(cluster.url(other))
            async with connection:
                channel = await connection.channel()
                queue = await channel.get_queue(name, ensure=False)
                message = await queue.get(timeout=5, fail=False)
                if message is not None:
                    body = message.body
                    await message.ack()
                    break
        except (TimeoutError, aio_pika.exceptions.AMQPError, RuntimeError):
            pass
        await asyncio.sleep(0.5)
    print(f"consumed from a surviving node {time.monotonic() - began:.1f} s after the kill")
    assert body == b"survivor"

    began = time.monotonic()
    await asyncio.to_thread(cluster.restart_node, leader)
    print(f"the killed node rejoined in {time.monotonic() - began:.1f} s")
    assert sorted(cluster.running_nodes(other)) == sorted(cluster.node_names)

    await asyncio.to_thread(cluster.set_memory_alarm, other, True)
    assert cluster.memory_alarm_active(other)
    await asyncio.to_thread(cluster.set_memory_alarm, other, False)


def test_a_failed_rabbitmq_boot_is_tried_again_from_scratch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first boot fails as a node does when it cannot boot (here: a setting it does not
    know); the second, with new names, ports and directories, starts."""
    prepare = RabbitCluster._prepare

    def first_fails(cluster: RabbitCluster) -> None:
        prepare(cluster)
        if cluster.boots == 1:
            (cluster.node_dir(0) / "rabbitmq.conf").write_text("no_such_setting = 1\n")

    monkeypatch.setattr(RabbitCluster, "_prepare", first_fails)
    with started(lambda: RabbitCluster(1)) as cluster:
        first = cluster.failed_boots
        assert cluster.boots == 2
        assert len(first) == 1
        assert "failed to boot" in first[0]
        assert "no_such_setting" in first[0]
        assert cluster.root.name == "boot-2"
        assert cluster.running_nodes(0) == cluster.node_names


async def test_proxy_blackholes_and_restores() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with BlackholeProxy(port) as proxy:
            reader, writer = await asyncio.open_connection(*proxy.address)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.read(4), 2) == b"ping"

            proxy.blackhole()
            writer.write(b"lost?")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(5), 0.5)
            assert proxy.connections == 1  # partitioned, not closed

            proxy.restore()
            # Held, not dropped: the bytes sent into the partition arrive once it heals.
            assert await asyncio.wait_for(reader.readexactly(5), 2) == b"lost?"

            proxy.cut()
            assert await asyncio.wait_for(reader.read(1), 2) == b""
            assert proxy.connections == 0
            writer.close()
    finally:
        server.close()
        await server.wait_closed()
