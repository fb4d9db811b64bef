"""The durable session store over SQLAlchemy's async engine: SQLite (embedded default,
aiosqlite) or PostgreSQL (production, asyncpg). One code path; dialect differences are
confined to the upsert helper and the connect arguments."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from axon.core.errors import NotFound, StoreUnavailable
from axon.core.ids import new_id
from axon.sessions.database import _retried, aware, transaction
from axon.sessions.records import MessageRecord, SessionRecord
from axon.sessions.store import AssistantReply, SessionStore
from axon.sessions.tables import messages, outbox, sessions

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


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
        await self._store_session(record)
        return record

    @_retried
    async def _store_session(self, record: SessionRecord) -> None:
        # The id is fixed before the first attempt: a retry of an insert that did commit
        # (only its answer was lost) must find its own row, not fail or add a second one.
        stmt = self._insert(sessions).values(**record.model_dump())
        async with self._tx() as conn:
            await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))

    @_retried
    async def get_session(self, tenant: str, session_id: str) -> SessionRecord:
        query = sa.select(sessions).where(sessions.c.id == session_id, sessions.c.tenant == tenant)
        async with self._tx() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"no session with id {session_id!r}", param="session_id")
        return _session(row)

    @_retried
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
        # Not retried: a retry of a delete that did commit would answer 404.
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

    @_retried
    async def add_user_message(
        self,
        tenant: str,
        session_id: str,
        *,
        content: str,
        reply_id: str,
        idempotency_key: str | None = None,
        request_hash: str | None = None,
        job: str | None = None,
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
            "request_hash": request_hash,
        }
        async with self._tx() as conn:
            if not await self._touch(conn, tenant, session_id, now):
                raise NotFound(f"no session with id {session_id!r}", param="session_id")
            # A conflict is a concurrent request with the same key, or this call's own
            # earlier attempt (it committed, its answer was lost): the reply id tells which.
            same = (
                ["session_id", "idempotency_key"] if idempotency_key is not None else ["reply_id"]
            )
            stmt = (
                self._insert(messages).values(**values).on_conflict_do_nothing(index_elements=same)
            )
            inserted = (await conn.execute(stmt.returning(messages))).first()
            if inserted is not None:
                if job is not None:
                    await conn.execute(
                        sa.insert(outbox).values(
                            reply_id=reply_id, session_id=session_id, job=job, created_at=now
                        )
                    )
                return _message(inserted), True
            found = [messages.c[column] == values[column] for column in same]
            row = (await conn.execute(sa.select(messages).where(*found))).one()
            return _message(row), row.reply_id == reply_id

    @_retried
    async def remove_turn(self, tenant: str, session_id: str, message_id: str) -> None:
        async with self._tx() as conn:
            row = (
                await conn.execute(
                    sa.delete(messages)
                    .where(
                        messages.c.id == message_id,
                        messages.c.session_id == session_id,
                        messages.c.tenant == tenant,
                    )
                    .returning(messages.c.reply_id)
                )
            ).first()
            if row is not None and row.reply_id is not None:
                await conn.execute(sa.delete(outbox).where(outbox.c.reply_id == row.reply_id))
                # A job the broker took after all, and answered before this: its reply goes
                # with the turn (later ones find no turn and are dropped).
                await conn.execute(
                    sa.delete(messages).where(
                        messages.c.id == row.reply_id, messages.c.tenant == tenant
                    )
                )

    @_retried
    async def published(self, reply_id: str) -> None:
        async with self._tx() as conn:
            await conn.execute(sa.delete(outbox).where(outbox.c.reply_id == reply_id))

    @_retried
    async def unpublished(self, older_than_s: float, limit: int = 100) -> list[str]:
        cutoff = _now() - timedelta(seconds=older_than_s)
        query = (
            sa.select(outbox.c.job)
            .where(outbox.c.created_at < cutoff)
            .order_by(outbox.c.created_at)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [row.job for row in await conn.execute(query)]

    async def find_by_idempotency_key(
        self, tenant: str, session_id: str, key: str
    ) -> MessageRecord | None:
        query = sa.select(messages).where(
            messages.c.session_id == session_id,
            messages.c.tenant == tenant,
            messages.c.idempotency_key == key,
        )
        return await self._first_message(query)

    @_retried
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
        # The turn that asked for it, locked: a turn withdrawn after a refused publish
        # (``remove_turn``, which takes the same row) cannot end up with an answer.
        turn = (
            sa.select(messages.c.id)
            .where(
                messages.c.reply_id == reply.id,
                messages.c.session_id == reply.session_id,
                messages.c.tenant == reply.tenant,
            )
            .with_for_update()
        )
        try:
            async with self._tx() as conn:
                if (await conn.execute(turn)).first() is None:
                    # The session was deleted while the reply was generated, or the turn
                    # was withdrawn (its client got a 503 and was told nothing is kept).
                    return None
                # Insert first: only the write that stored the reply touches the session,
                # so a losing duplicate changes nothing at all.
                row = (await conn.execute(stmt)).first()
                if row is not None:
                    await self._touch(conn, reply.tenant, reply.session_id, now)
        except IntegrityError:
            return None  # the session was deleted between the two statements
        return None if row is None else _message(row)

    @_retried
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

    @_retried
    async def _first_message(self, query: sa.Select[Any]) -> MessageRecord | None:
        async with self._tx() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else _message(row)

    async def ping(self) -> None:
        """Fail unless the store takes writes. A PostgreSQL standby (in recovery, or
        read-only) answers queries but refuses every write: while only a standby is
        reachable, as between a primary's death and its standby's promotion, this replica
        is not ready."""
        async with self._tx() as conn:
            if self.engine.dialect.name != "postgresql":
                await conn.execute(sa.text("SELECT 1"))
                return
            read_only = await conn.scalar(
                sa.text(
                    "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'"
                )
            )
            if read_only:
                # This connection leads to a server that cannot take writes: drop it, so
                # that the next one is made afresh (host list, DNS) and may find the primary.
                await conn.invalidate()
                raise StoreUnavailable("the session store is read-only: no primary is reachable")

    async def close(self) -> None:
        await self.engine.dispose()
