"""The session store through a PostgreSQL failover, against a private primary and hot
standby started for the test (never the shared server), with the two-host URL a Multi-AZ
install uses: ``postgresql+asyncpg://user@primary,standby/db?target_session_attrs=read-write``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa

from axon.cli.build import Backends
from axon.config import Settings, StoreSettings
from axon.core.errors import StoreUnavailable
from axon.sessions.database import make_engine
from axon.sessions.migrate import upgrade
from axon.sessions.sql import SqlSessionStore
from support.clusters import ClusterError, ClusterUnavailable, PostgresPair, wait_for
from support.services import missing

pytestmark = pytest.mark.integration

T = "tenant-1"


def asyncpg(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
def pair() -> Iterator[PostgresPair]:
    try:
        cluster = PostgresPair()
    except ClusterUnavailable as exc:
        missing(str(exc))
    with cluster:
        yield cluster


@pytest.fixture
async def store(pair: PostgresPair) -> AsyncIterator[SqlSessionStore]:
    """The store as a process builds it from its settings, migrations included, with both
    hosts in libpq's comma-separated form."""
    settings = Settings(store=StoreSettings(url=asyncpg(pair.dsn), pool_size=4))
    backends = Backends(settings)
    store = await backends.store(migrate=True)
    assert isinstance(store, SqlSessionStore)
    yield store
    await backends.close()


def replicated(pair: PostgresPair, reply_id: str) -> None:
    """Wait until the standby has the turn whose reply is ``reply_id``."""
    query = f"SELECT count(*) FROM axon_messages WHERE reply_id = '{reply_id}'"

    def arrived() -> bool:
        try:
            return pair.sql(pair.standby_port, query) == "1"
        except ClusterError:  # the table itself has not arrived yet
            return False

    wait_for(arrived, timeout=30, what="the standby to replay the turn")


async def server_port(store: SqlSessionStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.scalar(sa.text("SELECT inet_server_port()"))) or 0)


async def test_only_a_standby_is_not_ready_and_its_promotion_restores_writes(
    pair: PostgresPair, store: SqlSessionStore
) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    await store.add_user_message(T, session.id, content="before", reply_id="msg_r1")
    await store.ping()
    assert await server_port(store) == pair.primary_port
    await asyncio.to_thread(replicated, pair, "msg_r1")

    await asyncio.to_thread(pair.kill_primary)
    # Only the standby answers: the replica must not claim to be ready, and a write is a
    # retryable 503, never a 500.
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.add_user_message(T, session.id, content="lost", reply_id="msg_r2")

    await asyncio.to_thread(pair.promote_standby)
    await store.ping()
    await store.add_user_message(T, session.id, content="after", reply_id="msg_r3")
    history = await store.recent_messages(T, session.id, 10)
    assert [m.content for m in history] == ["before", "after"]
    assert await server_port(store) == pair.standby_port


async def test_pooled_connections_to_a_dead_primary_are_replaced_at_once(
    pair: PostgresPair, store: SqlSessionStore
) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    # Several connections in the pool, all to the primary.
    await asyncio.gather(*(store.recent_messages(T, session.id, 10) for _ in range(4)))
    await store.add_user_message(T, session.id, content="before", reply_id="msg_r1")
    await asyncio.to_thread(replicated, pair, "msg_r1")

    await asyncio.to_thread(pair.kill_primary)
    await asyncio.to_thread(pair.promote_standby)

    # The first calls after the failover succeed: the pool's pre-ping finds each
    # connection dead, and the host list leads the new ones to the promoted standby.
    await store.add_user_message(T, session.id, content="after", reply_id="msg_r2")
    results = await asyncio.gather(*(store.recent_messages(T, session.id, 10) for _ in range(4)))
    for history in results:
        assert [m.content for m in history] == ["before", "after"]
    await store.ping()


async def test_a_standby_alone_serves_reads_but_is_not_ready(pair: PostgresPair) -> None:
    primary = SqlSessionStore(make_engine(asyncpg(pair.primary_dsn)))
    await upgrade(asyncpg(pair.primary_dsn))
    session = await primary.create_session(T, title="t", model="m", system_prompt=None)
    await primary.add_user_message(T, session.id, content="hi", reply_id="msg_r1")
    await primary.close()
    await asyncio.to_thread(replicated, pair, "msg_r1")

    # A URL that names the standby alone, as a DNS name still pointing at it would.
    standby = SqlSessionStore(make_engine(asyncpg(pair.standby_dsn)))
    try:
        assert (await standby.get_session(T, session.id)).id == session.id
        with pytest.raises(StoreUnavailable, match="read-only"):
            await standby.ping()
        # "cannot execute INSERT in a read-only transaction": a 503, not a 500.
        with pytest.raises(StoreUnavailable):
            await standby.create_session(T, title="t", model="m", system_prompt=None)
    finally:
        await standby.close()
