"""The durable session store on SQLite (always) and PostgreSQL (``integration``), with the
schema built by the Alembic migrations exactly as ``axon db upgrade`` builds it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from axon.core.errors import NotFound, StoreUnavailable
from axon.core.types import ChatMessage, FinishReason, Job, SamplingParams
from axon.queue.memory import MemoryJobQueue
from axon.sessions.database import make_engine
from axon.sessions.migrate import upgrade
from axon.sessions.outbox import OutboxSweeper
from axon.sessions.sql import SqlSessionStore
from axon.sessions.store import AssistantReply
from axon.sessions.tables import messages, sessions
from support.services import POSTGRES_ADMIN, missing

#: The tenant every test works in (isolation between tenants has its own tests).
T = "tenant-1"

#: Each test run creates its own database on the server and drops it at the end.
POSTGRES_CANDIDATES = [POSTGRES_ADMIN]


async def _admin(url: URL, statement: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database or "postgres",
        timeout=5,
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session."""
    name = f"axon_test_{uuid.uuid4().hex[:12]}"
    errors: list[str] = []
    for candidate in POSTGRES_CANDIDATES:
        admin = make_url(candidate)
        try:
            asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            errors.append(f"{admin.render_as_string()}: {type(exc).__name__}: {exc}")
            continue
        break
    else:
        missing("PostgreSQL is unreachable: " + "; ".join(errors))
    yield admin.set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        # A folder that does not exist yet: the store creates it.
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store') / 'data' / 'axon.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SqlSessionStore]:
    await upgrade(db_url)
    store = SqlSessionStore(make_engine(db_url))
    # The PostgreSQL database is shared by the session's tests: start each one empty.
    async with store.engine.begin() as conn:
        await conn.execute(messages.delete())
        await conn.execute(sessions.delete())
    yield store
    await store.close()


async def count_messages(store: SqlSessionStore, **where: str) -> int:
    query = sa.select(sa.func.count()).select_from(messages)
    for column, value in where.items():
        query = query.where(messages.c[column] == value)
    async with store.engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


def reply(session_id: str, reply_id: str, content: str = "An answer.") -> AssistantReply:
    return AssistantReply(
        tenant=T,
        id=reply_id,
        session_id=session_id,
        content=content,
        status="complete",
        finish_reason=FinishReason.STOP,
        prompt_tokens=12,
        completion_tokens=3,
    )


async def test_a_created_session_can_be_read_back(store: SqlSessionStore) -> None:
    created = await store.create_session(T, title="Trip", model="tiny", system_prompt="Be brief.")

    got = await store.get_session(T, created.id)

    assert got == created
    assert got.title == "Trip"
    assert got.model == "tiny"
    assert got.system_prompt == "Be brief."
    assert got.created_at.tzinfo is not None


async def test_an_unknown_session_is_not_found(store: SqlSessionStore) -> None:
    with pytest.raises(NotFound) as caught:
        await store.get_session(T, "sess_missing")
    assert caught.value.code == "not_found"
    with pytest.raises(NotFound):
        await store.delete_session(T, "sess_missing")
    with pytest.raises(NotFound):
        await store.add_user_message(T, "sess_missing", content="hi", reply_id="req_x")


async def test_sessions_are_listed_newest_first_in_pages(store: SqlSessionStore) -> None:
    created = []
    for i in range(5):
        created.append(
            await store.create_session(T, title=f"s{i}", model="tiny", system_prompt=None)
        )
        # Ids carry milliseconds: keep the creations apart so "newest" is well defined.
        await asyncio.sleep(0.002)
    newest_first = [s.id for s in reversed(created)]

    page1, more1 = await store.list_sessions(T, limit=2)
    page2, more2 = await store.list_sessions(T, limit=2, after=page1[-1].id)
    page3, more3 = await store.list_sessions(T, limit=2, after=page2[-1].id)

    assert [s.id for s in page1 + page2 + page3] == newest_first
    assert (more1, more2, more3) == (True, True, False)
    assert [s.title for s in page1] == ["s4", "s3"]
    everything, more = await store.list_sessions(T, limit=5)
    assert [s.id for s in everything] == newest_first
    assert more is False


async def test_an_empty_store_lists_nothing(store: SqlSessionStore) -> None:
    assert await store.list_sessions(T, limit=10) == ([], False)


async def test_deleting_a_session_deletes_its_messages(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    other = await store.create_session(T, title="keep", model="tiny", system_prompt=None)
    message, _ = await store.add_user_message(T, session.id, content="hi", reply_id="req_1")
    await store.add_assistant_message(reply(session.id, "req_1"))
    await store.add_user_message(T, other.id, content="still here", reply_id="req_2")

    await store.delete_session(T, session.id)

    with pytest.raises(NotFound):
        await store.get_session(T, session.id)
    with pytest.raises(NotFound):
        await store.delete_session(T, session.id)
    assert await store.recent_messages(T, session.id, 10) == []
    assert await store.get_message(T, session.id, message.id) is None
    assert await count_messages(store, session_id=session.id) == 0
    assert [m.content for m in await store.recent_messages(T, other.id, 10)] == ["still here"]
    assert [s.id for s in (await store.list_sessions(T, limit=10))[0]] == [other.id]


async def test_a_retried_user_message_with_the_same_idempotency_key_is_stored_once(
    store: SqlSessionStore,
) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)

    first, created1 = await store.add_user_message(
        T, session.id, content="hello", reply_id="req_1", idempotency_key="key-1"
    )
    again, created2 = await store.add_user_message(
        T, session.id, content="hello", reply_id="req_2", idempotency_key="key-1"
    )

    assert (created1, created2) == (True, False)
    assert again == first
    assert again.reply_id == "req_1"
    assert await count_messages(store, session_id=session.id) == 1


async def test_idempotency_keys_are_scoped_to_their_session(store: SqlSessionStore) -> None:
    a = await store.create_session(T, title="a", model="tiny", system_prompt=None)
    b = await store.create_session(T, title="b", model="tiny", system_prompt=None)

    in_a, new_a = await store.add_user_message(
        T, a.id, content="hi", reply_id="req_a", idempotency_key="same"
    )
    in_b, new_b = await store.add_user_message(
        T, b.id, content="hi", reply_id="req_b", idempotency_key="same"
    )

    assert (new_a, new_b) == (True, True)
    assert in_a.id != in_b.id


async def test_user_messages_without_a_key_are_all_stored(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)

    one, new1 = await store.add_user_message(T, session.id, content="hi", reply_id="req_1")
    two, new2 = await store.add_user_message(T, session.id, content="hi", reply_id="req_2")

    assert (new1, new2) == (True, True)
    assert one.id != two.id
    assert await count_messages(store, session_id=session.id) == 2


async def test_an_assistant_reply_is_stored_exactly_once(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    await store.add_user_message(T, session.id, content="hi", reply_id="req_1")

    stored = await store.add_assistant_message(reply(session.id, "req_1", "Hello!"))
    again = await store.add_assistant_message(reply(session.id, "req_1", "A different text"))

    assert stored is not None
    assert stored.id == "req_1"
    assert stored.role == "assistant"
    assert stored.content == "Hello!"
    assert stored.finish_reason is FinishReason.STOP
    assert (stored.prompt_tokens, stored.completion_tokens) == (12, 3)
    assert again is None
    assert await count_messages(store, id="req_1") == 1
    assert await store.get_message(T, session.id, "req_1") == stored


async def test_a_reply_for_a_deleted_session_is_dropped_quietly(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    await store.add_user_message(T, session.id, content="hi", reply_id="req_1")
    await store.delete_session(T, session.id)

    assert await store.add_assistant_message(reply(session.id, "req_1")) is None
    assert await store.add_assistant_message(reply("sess_never", "req_2")) is None
    assert await count_messages(store) == 0


async def test_a_failed_reply_keeps_its_status_and_error_code(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    await store.add_user_message(T, session.id, content="hi", reply_id="req_1")
    failed = AssistantReply(
        tenant=T,
        id="req_1",
        session_id=session.id,
        content="Partial",
        status="failed",
        finish_reason=FinishReason.ERROR,
        prompt_tokens=5,
        completion_tokens=1,
        error_code="engine_error",
    )

    stored = await store.add_assistant_message(failed)

    assert stored is not None
    assert (stored.status, stored.error_code) == ("failed", "engine_error")
    assert stored.finish_reason is FinishReason.ERROR


async def test_recent_messages_are_the_newest_oldest_first(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    for turn in range(1, 4):
        await store.add_user_message(T, session.id, content=f"q{turn}", reply_id=f"req_{turn}")
        if turn < 3:
            await store.add_assistant_message(reply(session.id, f"req_{turn}", f"a{turn}"))

    everything = await store.recent_messages(T, session.id, 100)
    last3 = await store.recent_messages(T, session.id, 3)

    assert [m.content for m in everything] == ["q1", "a1", "q2", "a2", "q3"]
    assert [m.role for m in everything] == ["user", "assistant"] * 2 + ["user"]
    assert [m.content for m in last3] == ["q2", "a2", "q3"]
    seqs = [m.seq for m in everything]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


async def test_find_turn_finds_the_question_of_a_reply(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    other = await store.create_session(T, title="o", model="tiny", system_prompt=None)
    question, _ = await store.add_user_message(T, session.id, content="why?", reply_id="req_9")

    assert await store.find_turn(T, session.id, "req_9") == question
    assert await store.find_turn(T, session.id, "req_unknown") is None
    assert await store.find_turn(T, other.id, "req_9") is None


async def test_concurrent_user_messages_on_one_session_all_get_their_own_place(
    store: SqlSessionStore,
) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)

    results = await asyncio.gather(
        *(
            store.add_user_message(T, session.id, content=f"m{i}", reply_id=f"req_{i}")
            for i in range(10)
        )
    )

    assert all(created for _, created in results)
    stored = await store.recent_messages(T, session.id, 100)
    assert len(stored) == 10
    assert len({m.id for m in stored}) == 10
    assert sorted(m.content for m in stored) == sorted(f"m{i}" for i in range(10))
    seqs = [m.seq for m in stored]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 10
    assert sorted(m.seq for m, _ in results) == seqs


async def test_ping_tells_a_store_that_is_up_from_one_that_is_down(
    store: SqlSessionStore, db_url: str, tmp_path: Path
) -> None:
    await store.ping()
    if db_url.startswith("sqlite"):
        down = f"sqlite+aiosqlite:///{tmp_path / 'not-a-folder'}/x/axon.db"
        (tmp_path / "not-a-folder").write_text("a file where a folder should be")
    else:
        down = make_url(db_url).set(port=1).render_as_string(hide_password=False)
    unreachable = SqlSessionStore(create_async_engine(down))
    try:
        with pytest.raises(StoreUnavailable):
            await unreachable.ping()
    finally:
        await unreachable.close()


async def test_every_query_is_scoped_by_tenant(store: SqlSessionStore) -> None:
    other = "tenant-2"
    session = await store.create_session(T, title="mine", model="tiny", system_prompt=None)
    question, _ = await store.add_user_message(
        T, session.id, content="q", reply_id="msg_r1", idempotency_key="k1"
    )
    assert await store.add_assistant_message(reply(session.id, "msg_r1")) is not None

    with pytest.raises(NotFound) as theirs:
        await store.get_session(other, session.id)
    with pytest.raises(NotFound) as unknown:
        await store.get_session(other, "sess_unknown")
    assert str(theirs.value).replace(session.id, "ID") == str(unknown.value).replace(
        "sess_unknown", "ID"
    )
    assert await store.list_sessions(other, limit=10) == ([], False)
    with pytest.raises(NotFound):
        await store.delete_session(other, session.id)
    with pytest.raises(NotFound):
        await store.add_user_message(other, session.id, content="x", reply_id="msg_r2")
    assert await store.recent_messages(other, session.id, 10) == []
    assert await store.get_message(other, session.id, "msg_r1") is None
    assert await store.find_turn(other, session.id, "msg_r1") is None
    assert await store.find_by_idempotency_key(other, session.id, "k1") is None
    foreign = AssistantReply(
        tenant=other,
        id="msg_r3",
        session_id=session.id,
        content="injected",
        status="complete",
        finish_reason=FinishReason.STOP,
        prompt_tokens=1,
        completion_tokens=1,
    )
    assert await store.add_assistant_message(foreign) is None

    # The owner still sees everything, and only that.
    assert [m.id for m in await store.recent_messages(T, session.id, 10)] == [
        question.id,
        "msg_r1",
    ]
    assert (await store.find_by_idempotency_key(T, session.id, "k1")) == question


async def test_the_tenant_migration_moves_existing_rows_to_the_default_tenant(
    db_url: str,
) -> None:
    await upgrade(db_url, "0001")
    engine = make_engine(db_url)
    now = sa.func.current_timestamp()
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM axon_messages"))
            await conn.execute(sa.text("DELETE FROM axon_sessions"))
            await conn.execute(
                sa.insert(
                    sa.table(
                        "axon_sessions",
                        *(
                            sa.column(c)
                            for c in ("id", "title", "model", "created_at", "updated_at")
                        ),
                    )
                ).values(id="sess_old", title="old", model="tiny", created_at=now, updated_at=now)
            )
            await conn.execute(
                sa.insert(
                    sa.table(
                        "axon_messages",
                        *(
                            sa.column(c)
                            for c in ("id", "session_id", "role", "content", "status", "created_at")
                        ),
                    )
                ).values(
                    id="msg_old",
                    session_id="sess_old",
                    role="user",
                    content="hi",
                    status="complete",
                    created_at=now,
                )
            )
    finally:
        await engine.dispose()

    await upgrade(db_url)

    store = SqlSessionStore(make_engine(db_url))
    try:
        assert (await store.get_session("default", "sess_old")).tenant == "default"
        [old] = await store.recent_messages("default", "sess_old", 10)
        assert (old.id, old.tenant) == ("msg_old", "default")
        with pytest.raises(NotFound):
            await store.get_session(T, "sess_old")
    finally:
        await store.close()


async def test_upgrading_an_up_to_date_schema_changes_nothing(
    store: SqlSessionStore, db_url: str
) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)

    await upgrade(db_url)
    await upgrade(db_url)

    assert await store.get_session(T, session.id) == session


def test_axon_db_upgrade_can_run_twice(db_url: str, tmp_path: Path) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AXON_")},
        "AXON_STORE__URL": db_url,
        "AXON_DATA_DIR": str(tmp_path),
    }
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "axon", "db", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "schema up to date" in done.stdout

    async def tables() -> set[str]:
        engine = make_engine(db_url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    assert {"axon_sessions", "axon_messages", "axon_alembic_version"} <= asyncio.run(tables())


async def test_a_failed_statement_never_carries_message_text(store: SqlSessionStore) -> None:
    secret = "my private message text"
    # A message for a session that does not exist breaks the foreign key.
    with pytest.raises(sa.exc.IntegrityError) as failure:
        async with store.engine.begin() as conn:
            await conn.execute(
                messages.insert().values(
                    id="msg_x",
                    session_id="sess_missing",
                    tenant=T,
                    role="user",
                    content=secret,
                    status="complete",
                    created_at=sa.func.current_timestamp(),
                )
            )
    # Errors end up in logs: they name the statement, never its parameters.
    assert secret not in str(failure.value)
    assert secret not in repr(failure.value)


async def test_a_turn_left_in_the_outbox_is_queued_by_the_sweeper(store: SqlSessionStore) -> None:
    # A session manager that died between storing a turn and queueing its job leaves the
    # job in the outbox, written in the user message's transaction; any replica queues it.
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    job = Job(
        request_id="msg_outbox",
        model="tiny",
        messages=[ChatMessage(role="user", content="hello")],
        params=SamplingParams(),
        session_id=session.id,
        tenant=T,
        deadline=time.time() + 60,
    )
    await store.add_user_message(
        T, session.id, content="hello", reply_id=job.request_id, job=job.model_dump_json()
    )
    queue = MemoryJobQueue()
    sweeper = OutboxSweeper(store, queue, after_s=0.0)

    assert await sweeper.sweep() == 1
    assert queue.pending("tiny") == 1
    assert await store.unpublished(0) == []
    assert await sweeper.sweep() == 0


async def test_a_refused_turn_is_removed_with_its_outbox_entry(store: SqlSessionStore) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    message, _ = await store.add_user_message(
        T, session.id, content="hello", reply_id="msg_refused", job="{}"
    )
    await store.remove_turn(T, session.id, message.id)
    assert await store.recent_messages(T, session.id, 10) == []
    assert await store.unpublished(0) == []
    # The broker took the job after all (the refusal was a timeout) and it was answered:
    # a turn that was withdrawn gets no reply.
    assert await store.add_assistant_message(reply(session.id, "msg_refused")) is None
    assert await store.recent_messages(T, session.id, 10) == []


async def test_withdrawing_a_turn_takes_a_reply_stored_before_with_it(
    store: SqlSessionStore,
) -> None:
    session = await store.create_session(T, title="t", model="tiny", system_prompt=None)
    message, _ = await store.add_user_message(T, session.id, content="hi", reply_id="msg_fast")
    assert await store.add_assistant_message(reply(session.id, "msg_fast")) is not None
    await store.remove_turn(T, session.id, message.id)
    assert await store.recent_messages(T, session.id, 10) == []
