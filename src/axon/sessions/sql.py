"""The durable session store over SQLAlchemy's async engine: SQLite (embedded default,
aiosqlite) or PostgreSQL (production, asyncpg). One code path; dialect differences are
confined to the upsert helper and the connect arguments."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from axon.core.errors import NotFound, StoreUnavailable
from axon.core.ids import new_id
from axon.sessions.records import MessageRecord, SessionRecord
from axon.sessions.store import AssistantReply, SessionStore
from axon.sessions.tables import messages, sessions


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file URL, so a fresh data directory just works."""
    path = url.split(":///", 1)[-1] if url.startswith("sqlite") else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Build the async engine for ``url``. PostgreSQL URLs may name several hosts
    (``?host=a:5432&host=b:5432&target_session_attrs=read-write``), which asyncpg
    tries in turn, so a Multi-AZ failover only costs a reconnect."""
    if url.startswith("sqlite"):
        ensure_sqlite_dir(url)
        # hide_parameters: a failed statement's message must not carry user text (message
        # content) into error logs.
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets readers proceed while a turn is written; foreign keys make
            # DELETE of a session cascade to its messages.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        # A connection the database dropped (failover, idle timeout) is detected
        # before use instead of failing the request that drew it.
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """``value`` with its time zone: SQLite returns naive datetimes even for
    timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _session(row: sa.Row[Any]) -> SessionRecord:
    m = row._mapping
    return SessionRecord(
        id=m["id"],
        tenant=m["tenant"],
        title=m["title"],
        model=m["model"],
        system_prompt=m["system_prompt"],
        created_at=aware(m["created_at"]),
        updated_at=aware(m["updated_at"]),
    )


def _message(row: sa.Row[Any]) -> MessageRecord:
    m = dict(row._mapping)
    m["seq"] = m.pop("pos")
    m["created_at"] = aware(m["created_at"])
    return MessageRecord.model_validate(m)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction; a store that cannot be reached becomes ``StoreUnavailable``."""
    try:
        async with engine.begin() as conn:
            yield conn
    except (OperationalError, OSError, ConnectionError) as exc:
        raise StoreUnavailable(f"the session store is unavailable: {type(exc).__name__}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable("the session store connection was lost") from exc
        raise


class SqlSessionStore(SessionStore):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def _tx(self) -> AbstractAsyncContextManager[AsyncConnection]:
        return transaction(self.engine)

    async def create_session(
        self, tenant: str, *, title: str, model: str, system_prompt: str | None
    ) -> SessionRecord:
        now = _now()
        record = SessionRecord(
            id=new_id("sess"),
            tenant=tenant,
            title=title,
            model=model,
            system_prompt=system_prompt,
            created_at=now,
            updated_at=now,
        )
        async with self._tx() as conn:
            await conn.execute(sessions.insert().values(**record.model_dump()))
        return record

    async def get_session(self, tenant: str, session_id: str) -> SessionRecord:
        query = sa.select(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant)
        async with self._tx() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no session with id {session_id!r}", param="session_id")
        return _session(row)

    async def list_sessions(
        self, tenant: str, *, limit: int, after: str | None = None
    ) -> tuple[list[SessionRecord], bool]:
        # Ids begin with their creation time, so id order is creation order.
        query = (
            sa.select(sessions)
            .where(sessions.c.tenant == tenant)
            .order_by(sessions.c.id.desc())
            .limit(limit + 1)
        )
        if after:
            query = query.where(sessions.c.id < after)
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [_session(r) for r in rows[:limit]], len(rows) > limit

    async def delete_session(self, tenant: str, session_id: str) -> None:
        async with self._tx() as conn:
            result = await conn.execute(
                sessions.delete().where(sessions.c.id == session_id, sessions.c.tenant == tenant)
            )
            if result.rowcount:
                # Explicit, so that a store without cascading foreign keys stays clean too.
                await conn.execute(
                    messages.delete().where(
                        messages.c.session_id == session_id, messages.c.tenant == tenant
                    )
                )
        if result.rowcount == 0:
            raise NotFound(f"no session with id {session_id!r}", param="session_id")

    async def _touch(
        self, conn: AsyncConnection, tenant: str, session_id: str, when: datetime
    ) -> bool:
        result = await conn.execute(
            sessions.update()
            .where(sessions.c.id == session_id, sessions.c.tenant == tenant)
            .values(updated_at=when)
        )
        return bool(result.rowcount)

    async def add_user_message(
        self,
        tenant: str,
        session_id: str,
        *,
        content: str,
        reply_id: str,
        idempotency_key: str | None = None,
    ) -> tuple[MessageRecord, bool]:
        now = _now()
        values = {
            "id": new_id("msg"),
            "session_id": session_id,
            "tenant": tenant,
            "role": "user",
            "content": content,
            "status": "complete",
            "created_at": now,
            "reply_id": reply_id,
            "idempotency_key": idempotency_key,
        }
        async with self._tx() as conn:
            if not await self._touch(conn, tenant, session_id, now):
                raise NotFound(f"no session with id {session_id!r}", param="session_id")
            if idempotency_key is not None:
                stmt = (
                    self._insert(messages)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=["session_id", "idempotency_key"])
                )
            else:
                stmt = self._insert(messages).values(**values)
            inserted = (await conn.execute(stmt.returning(messages))).first()
            if inserted is not None:
                return _message(inserted), True
            row = (
                await conn.execute(
                    sa.select(messages).where(
                        messages.c.session_id == session_id,
                        messages.c.idempotency_key == idempotency_key,
                    )
                )
            ).one()
            return _message(row), False

    async def find_by_idempotency_key(
        self, tenant: str, session_id: str, key: str
    ) -> MessageRecord | None:
        query = sa.select(messages).where(
            messages.c.session_id == session_id,
            messages.c.tenant == tenant,
            messages.c.idempotency_key == key,
        )
        return await self._first_message(query)

    async def add_assistant_message(self, reply: AssistantReply) -> MessageRecord | None:
        now = _now()
        stmt = (
            self._insert(messages)
            .values(
                id=reply.id,
                session_id=reply.session_id,
                tenant=reply.tenant,
                role="assistant",
                content=reply.content,
                status=reply.status,
                created_at=now,
                finish_reason=reply.finish_reason.value,
                prompt_tokens=reply.prompt_tokens,
                completion_tokens=reply.completion_tokens,
                error_code=reply.error_code,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(messages)
        )
        exists = sa.select(sessions.c.id).where(
            sessions.c.id == reply.session_id, sessions.c.tenant == reply.tenant
        )
        try:
            async with self._tx() as conn:
                if (await conn.execute(exists)).first() is None:
                    return None  # the session was deleted while the reply was generated
                # Insert first: only the write that stored the reply touches the session,
                # so a losing duplicate changes nothing at all.
                row = (await conn.execute(stmt)).first()
                if row is not None:
                    await self._touch(conn, reply.tenant, reply.session_id, now)
        except IntegrityError:
            return None  # the session was deleted between the two statements
        return None if row is None else _message(row)

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int
    ) -> list[MessageRecord]:
        query = (
            sa.select(messages)
            .where(messages.c.session_id == session_id, messages.c.tenant == tenant)
            .order_by(messages.c.pos.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            rows = (await conn.execute(query)).all()
        return [_message(r) for r in reversed(rows)]

    async def get_message(
        self, tenant: str, session_id: str, message_id: str
    ) -> MessageRecord | None:
        query = sa.select(messages).where(
            messages.c.session_id == session_id,
            messages.c.tenant == tenant,
            messages.c.id == message_id,
        )
        return await self._first_message(query)

    async def find_turn(self, tenant: str, session_id: str, reply_id: str) -> MessageRecord | None:
        query = sa.select(messages).where(
            messages.c.session_id == session_id,
            messages.c.tenant == tenant,
            messages.c.reply_id == reply_id,
        )
        return await self._first_message(query)

    async def _first_message(self, query: sa.Select[Any]) -> MessageRecord | None:
        async with self._tx() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _message(row)

    async def ping(self) -> None:
        async with self._tx() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


async def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names if it does not exist (SQLite files are
    created on first use). Connects to the server's ``postgres`` database to do so."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": parsed.database},
            )
            if not exists:
                quoted = admin.dialect.identifier_preparer.quote(parsed.database)
                await conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        await admin.dispose()
