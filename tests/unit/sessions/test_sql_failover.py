"""The store's side of a database failover, without a database server: which errors are
transient (a retryable 503, never a 500), how multi-host URLs reach asyncpg, and that a
store call retried after a lost answer neither fails nor writes twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import (
    AsyncAdapt_asyncpg_connection,
    AsyncAdapt_asyncpg_dbapi,
    dialect,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from axon.core.errors import NotFound, StoreUnavailable
from axon.sessions import database
from axon.sessions.database import engine_url, is_transient, make_engine
from axon.sessions.migrate import upgrade
from axon.sessions.sql import SqlSessionStore
from axon.sessions.tables import messages, sessions

T = "tenant-1"


def wrapped(error: Exception) -> sa.exc.DBAPIError:
    """``error`` as a store call sees it: translated by SQLAlchemy's asyncpg adapter, then
    wrapped in SQLAlchemy's own exception, exactly as a failed statement raises it."""
    dbapi = AsyncAdapt_asyncpg_dbapi(asyncpg)
    try:
        AsyncAdapt_asyncpg_connection._handle_exception_no_connection(dbapi, error)
    except Exception as translated:
        return sa.exc.DBAPIError.instance("SELECT 1", None, translated, dbapi.Error)
    raise AssertionError("not translated")


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.ReadOnlySQLTransactionError(
            "cannot execute INSERT in a read-only transaction"
        ),
        asyncpg.exceptions.AdminShutdownError(
            "terminating connection due to administrator command"
        ),
        asyncpg.exceptions.CrashShutdownError("terminating connection due to crash"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.TargetServerAttributeNotMatched(
            "None of the hosts match the target attribute requirement"
        ),
    ],
    ids=lambda error: type(error).__name__,
)
def test_failover_and_contention_errors_are_transient(error: Exception) -> None:
    assert is_transient(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        sa.exc.TimeoutError("QueuePool limit reached"),
        sa.exc.OperationalError("SELECT 1", None, Exception("database is locked")),
    ],
    ids=lambda error: type(error).__name__,
)
def test_unreachable_and_exhausted_are_transient(error: Exception) -> None:
    assert is_transient(error)


def test_a_lost_connection_is_transient_whatever_its_error() -> None:
    lost = sa.exc.DBAPIError("SELECT 1", None, Exception("?"), connection_invalidated=True)
    assert is_transient(lost)


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.ForeignKeyViolationError("violates foreign key"),
        asyncpg.exceptions.UndefinedTableError('relation "axon_sessions" does not exist'),
        asyncpg.exceptions.InvalidPasswordError("password authentication failed"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_faults_that_a_retry_cannot_fix_are_not_transient(error: Exception) -> None:
    assert not is_transient(wrapped(error))


@pytest.mark.parametrize(
    ("url", "hosts", "rest"),
    [
        (
            "postgresql+asyncpg://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write",
            ["h1", "h2"],
            {"target_session_attrs": "read-write"},
        ),
        ("postgresql+asyncpg://u@h1,h2:6432/db", ["h1", "h2"], {}),
        (
            "postgresql+asyncpg://u@/db?host=h1:5432&host=h2:5433&target_session_attrs=primary",
            ["h1", "h2"],
            {"target_session_attrs": "primary"},
        ),
    ],
)
def test_a_multi_host_url_reaches_asyncpg_as_a_host_list(
    url: str, hosts: list[str], rest: dict[str, str]
) -> None:
    args = dialect().create_connect_args(sa.make_url(engine_url(url)))[1]
    assert args["host"] == hosts
    assert len(args["port"]) == len(hosts)
    assert args["database"] == "db"
    assert args["user"] == "u"
    for key, value in rest.items():
        assert args[key] == value


def test_the_port_of_each_host_is_kept_and_defaults_to_5432() -> None:
    url = engine_url("postgresql+asyncpg://u@h1,h2:6432/db")
    args = dialect().create_connect_args(sa.make_url(url))[1]
    assert args["port"] == [5432, 6432]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:p@h1:5432/db",
        "postgresql+asyncpg://u@/db?host=h1:5432&host=h2:5433",
        "sqlite+aiosqlite:////tmp/a,b/axon.db",
    ],
)
def test_other_urls_are_left_alone(url: str) -> None:
    assert engine_url(url) == url


def test_a_password_stays_in_the_multi_host_url() -> None:
    url = sa.make_url(engine_url("postgresql+asyncpg://u:s%40cret@h1:1,h2:2/db"))
    assert url.password == "s@cret"
    assert url.query["host"] == ("h1:1", "h2:2")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqlSessionStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'axon.db'}"
    await upgrade(url)
    store = SqlSessionStore(make_engine(url))
    yield store
    await store.close()


@pytest.fixture
def no_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database, "_RETRY_PAUSES_S", (0.0, 0.0))


class AnswerLost:
    """Makes the store's next ``failures`` transactions commit, then fail as if the
    connection dropped before the answer arrived: the case where a retry meets its own
    earlier write."""

    def __init__(self, store: SqlSessionStore, failures: int, *, before_commit: bool = False):
        self.failures = failures
        self.attempts = 0
        self._tx = store._tx
        self._before_commit = before_commit
        store._tx = self  # type: ignore[method-assign]

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncConnection]:
        self.attempts += 1
        failing = self.attempts <= self.failures
        async with self._tx() as conn:
            yield conn
            if failing and self._before_commit:
                raise StoreUnavailable("connection lost before commit")
        if failing:
            raise StoreUnavailable("connection lost after commit")


async def count(store: SqlSessionStore, table: sa.Table) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.scalar(sa.select(sa.func.count()).select_from(table))) or 0)


@pytest.mark.usefixtures("no_pauses")
async def test_a_session_created_while_the_answer_was_lost_is_created_once(
    store: SqlSessionStore,
) -> None:
    lost = AnswerLost(store, failures=1)
    record = await store.create_session(T, title="t", model="m", system_prompt=None)
    assert lost.attempts == 2
    assert await count(store, sessions) == 1
    assert (await store.get_session(T, record.id)).id == record.id


@pytest.mark.usefixtures("no_pauses")
@pytest.mark.parametrize("key", [None, "key-1"])
async def test_a_retried_user_message_finds_its_own_row_and_is_still_new(
    store: SqlSessionStore, key: str | None
) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    lost = AnswerLost(store, failures=1)
    message, created = await store.add_user_message(
        T, session.id, content="hello", reply_id="msg_r1", idempotency_key=key
    )
    assert lost.attempts == 2
    # New to the caller, who must still queue its job: the first attempt was its own.
    assert created
    assert (message.reply_id, message.content) == ("msg_r1", "hello")
    assert await count(store, messages) == 1


@pytest.mark.usefixtures("no_pauses")
async def test_the_same_key_from_another_request_is_still_a_duplicate(
    store: SqlSessionStore,
) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    first, _ = await store.add_user_message(
        T, session.id, content="hello", reply_id="msg_r1", idempotency_key="k"
    )
    again, created = await store.add_user_message(
        T, session.id, content="hello", reply_id="msg_r2", idempotency_key="k"
    )
    assert not created
    assert again.id == first.id


@pytest.mark.usefixtures("no_pauses")
async def test_reads_are_retried_and_give_up_after_three_attempts(
    store: SqlSessionStore,
) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    lost = AnswerLost(store, failures=2, before_commit=True)
    assert (await store.get_session(T, session.id)).id == session.id
    assert lost.attempts == 3

    lost = AnswerLost(store, failures=3, before_commit=True)
    with pytest.raises(StoreUnavailable):
        await store.recent_messages(T, session.id, 10)
    assert lost.attempts == 3


@pytest.mark.usefixtures("no_pauses")
async def test_a_delete_is_not_retried(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="m", system_prompt=None)
    lost = AnswerLost(store, failures=1)
    # A retry would answer 404 for the session this very call deleted.
    with pytest.raises(StoreUnavailable):
        await store.delete_session(T, session.id)
    assert lost.attempts == 1
    with pytest.raises(NotFound):
        await store.get_session(T, session.id)


async def test_a_timeout_is_not_retried(store: SqlSessionStore) -> None:
    calls = 0

    @asynccontextmanager
    async def timing_out() -> AsyncIterator[AsyncConnection]:
        nonlocal calls
        calls += 1
        raise StoreUnavailable("timed out") from TimeoutError()
        yield  # pragma: no cover

    store._tx = timing_out  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        await store.list_sessions(T, limit=10)
    assert calls == 1


async def test_an_unreachable_server_is_a_store_unavailable_not_a_500() -> None:
    # Nothing listens on port 1: asyncpg's connection is refused.
    store = SqlSessionStore(make_engine("postgresql+asyncpg://u@127.0.0.1:1,127.0.0.1:1/db"))
    try:
        with pytest.raises(StoreUnavailable):
            await store.ping()
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreUnavailable):
            await store.list_sessions(T, limit=1)
        # Retried, with short pauses only.
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await store.close()
