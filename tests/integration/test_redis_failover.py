"""Redis failover, against private Redis servers started for the test (never the shared
one): through Sentinel, as a self-hosted install runs it, and behind a DNS name that moves
to the promoted replica, as a managed service fails over."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from axon.cli.build import Backends
from axon.config import BackendSettings, Settings
from axon.core.errors import Unavailable
from axon.core.types import EventKind, StreamEvent
from axon.ratelimit.redis import RedisRateLimiter
from axon.redis_client import make_client
from axon.streaming.redis import RedisTokenStreams
from support.clusters import (
    ClusterUnavailable,
    RedisSentinelGroup,
    free_port,
    port_open,
    redis_command,
    wait_for,
)
from support.services import missing

pytestmark = pytest.mark.integration


def tokens(text: str) -> list[StreamEvent]:
    return [StreamEvent(kind=EventKind.TOKENS, text=text, tokens=1)]


@pytest.fixture
def sentinel_group() -> Iterator[RedisSentinelGroup]:
    try:
        group = RedisSentinelGroup()
    except ClusterUnavailable as exc:
        missing(str(exc))
    with group:
        yield group


async def test_sentinel_clients_follow_the_promoted_replica(
    sentinel_group: RedisSentinelGroup,
) -> None:
    group = sentinel_group
    settings = Settings(
        backends=BackendSettings(
            streams="redis",
            ratelimit="redis",
            redis_sentinels=[f"{host}:{port}" for host, port in group.sentinels],
            redis_sentinel_master=group.master_name,
            redis_prefix=f"axon-test-{uuid.uuid4().hex[:8]}:",
        )
    )
    backends = Backends(settings)
    streams, limiter = backends.streams(), backends.limiter()
    try:
        await streams.append("r1", tokens("before"))
        assert (await limiter.hit("k", 100, 60.0)).allowed
        # Replicated before the primary dies, so the promoted replica has it.
        assert await backends.redis_streams().wait(1, 5000) == 1

        old = await asyncio.to_thread(group.kill_primary)
        outages = 0
        deadline = time.monotonic() + 60
        while True:
            try:
                await streams.append("r1", tokens("after"))
                assert (await limiter.hit("k", 100, 60.0)).allowed
                break
            except Unavailable:
                # The one error a caller sees while no primary is known.
                outages += 1
                assert time.monotonic() < deadline, "never reached the promoted replica"
                await asyncio.sleep(0.2)
        new = await asyncio.to_thread(group.wait_promoted)

        assert outages > 0  # the test did see the outage
        assert new != old
        texts = [event.text for _, event in await streams.read("r1")]
        assert texts == ["before", "after"]
        # Both pools (commands, token streams) are on the new primary.
        for client in (backends.redis(), backends.redis_streams()):
            info = await client.info("server")
            assert info["tcp_port"] == new
    finally:
        await backends.close()


class MovableName:
    """A TCP forwarder standing for a DNS name: new connections go to the current
    ``target``; connections already open stay with the server they reached, as they do
    when a managed service repoints its DNS name at a promoted replica."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MovableName:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        pumps = [
            asyncio.create_task(pump(reader, up_writer)),
            asyncio.create_task(pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        await asyncio.gather(*pumps, return_exceptions=True)


@contextlib.contextmanager
def redis_servers(count: int, workdir: Path) -> Iterator[list[int]]:
    """``count`` private, diskless Redis servers; killed (only they) on exit."""
    ports = [free_port() for _ in range(count)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
            processes.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        for port in ports:
            wait_for(partial(port_open, port), timeout=30, what=f"Redis on port {port}")
        yield ports
    finally:
        for process in processes:
            process.kill()
            process.wait()


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[int, int]]:
    if shutil.which("redis-server") is None:
        missing("redis-server is not installed")
    with redis_servers(2, tmp_path) as (primary, replica):
        redis_command(replica, "REPLICAOF", "127.0.0.1", primary)
        yield primary, replica


async def test_a_demoted_primary_behind_a_moved_name_is_left_for_the_new_one(
    primary_and_replica: tuple[int, int],
) -> None:
    primary, replica = primary_and_replica
    async with MovableName(primary) as name:
        client, close = make_client(BackendSettings(redis_url=f"redis://127.0.0.1:{name.port}/0"))
        streams = RedisTokenStreams(client, prefix="t:", ttl_s=60, maxlen=100)
        limiter = RedisRateLimiter(client, prefix="t:")
        try:
            await streams.cancel("r1")
            assert (await limiter.hit("k", 100, 60.0)).allowed

            # The managed service's failover: the replica is promoted, the old primary is
            # demoted but stays up (the pool's connection to it stays open), and the name
            # now leads to the new primary.
            redis_command(replica, "REPLICAOF", "NO", "ONE")
            redis_command(primary, "REPLICAOF", "127.0.0.1", replica)
            name.target = replica

            # The pooled connection meets READONLY, is dropped, and the retry's new
            # connection reaches the new primary: the caller sees no error at all.
            await streams.cancel("r2")
            assert (await limiter.hit("k", 100, 60.0)).allowed
            assert await streams.is_cancelled("r2")
            assert (await client.info("server"))["tcp_port"] == replica
            refused = str(redis_command(primary, "INFO", "errorstats"))
            assert "errorstat_READONLY:count=" in refused  # the old primary did refuse
        finally:
            await close()
