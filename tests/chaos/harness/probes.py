"""Single turns a scenario sends beside the workload, and what the store holds for them."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from .checker import Stored
from .turns import Turn


async def new_session(http: httpx.AsyncClient, gateway: str, within_s: float = 60.0) -> str:
    deadline = time.monotonic() + within_s
    while True:
        try:
            r = await http.post(f"{gateway}/v1/sessions", json={"title": "probe"})
            if r.status_code == 201:
                sid: str = r.json()["id"]
                return sid
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError("could not create a probe session")
        await asyncio.sleep(0.5)


def probe_turn(session_id: str, label: str) -> Turn:
    key = uuid.uuid4().hex
    return Turn(-1, 0, session_id, key, f"probe {label} {key[:8]}")


def again(turn: Turn) -> Turn:
    """A fresh record for sending ``turn`` again, with the same key and content."""
    return Turn(turn.conversation, turn.index, turn.session_id, turn.key, turn.content)


async def rows_for_key(store_url: str, key: str) -> list[Stored]:
    """The user messages stored with Idempotency-Key ``key``, and their replies."""
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT id, session_id, role, status, content, reply_id, "
                        "idempotency_key, error_code FROM axon_messages WHERE "
                        "idempotency_key = :key OR id IN (SELECT reply_id FROM axon_messages "
                        "WHERE idempotency_key = :key) ORDER BY pos"
                    ),
                    {"key": key},
                )
            ).all()
    finally:
        await engine.dispose()
    return [Stored(*row) for row in rows]


async def wait_user_row(store_url: str, key: str, within_s: float) -> Stored | None:
    """The user message stored for ``key``, as soon as it is committed."""
    deadline = time.monotonic() + within_s
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            while time.monotonic() < deadline:
                row = (
                    await conn.execute(
                        sa.text(
                            "SELECT id, session_id, role, status, content, reply_id, "
                            "idempotency_key, error_code FROM axon_messages "
                            "WHERE idempotency_key = :key AND role = 'user'"
                        ),
                        {"key": key},
                    )
                ).first()
                await conn.commit()  # a new snapshot for the next look
                if row is not None:
                    return Stored(*row)
                await asyncio.sleep(0.02)
    finally:
        await engine.dispose()
    return None


def summary(rows: list[Stored]) -> str:
    return ", ".join(f"{r.role}/{r.status}/{len(r.content)} chars" for r in rows) or "nothing"


async def rows_in_session(store_url: str, session_id: str) -> list[Stored]:
    """Every message stored in one session."""
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT id, session_id, role, status, content, reply_id, "
                        "idempotency_key, error_code FROM axon_messages "
                        "WHERE session_id = :sid ORDER BY pos"
                    ),
                    {"sid": session_id},
                )
            ).all()
    finally:
        await engine.dispose()
    return [Stored(*row) for row in rows]
