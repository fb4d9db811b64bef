"""A multi-host PostgreSQL DSN: the store connects to whichever listed host accepts
writes, so a Multi-AZ failover costs a reconnect, not a configuration change."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from axon.sessions.database import make_engine
from axon.sessions.sql import SqlSessionStore
from support.services import POSTGRES_ADMIN, require_port

pytestmark = pytest.mark.integration


async def test_first_host_down_second_serves() -> None:
    require_port(5432, "PostgreSQL")
    user_and_db = POSTGRES_ADMIN.split("://", 1)[1]
    user = user_and_db.split("@", 1)[0]
    database = user_and_db.rsplit("/", 1)[1]
    url = (
        f"postgresql+asyncpg://{user}@/{database}"
        "?host=127.0.0.1:1&host=127.0.0.1:5432&target_session_attrs=read-write"
    )
    engine = make_engine(url)
    store = SqlSessionStore(engine)
    try:
        await store.ping()
        async with engine.connect() as conn:
            port = (await conn.execute(sa.text("SELECT inet_server_port()"))).scalar_one()
            read_only = (await conn.execute(sa.text("SHOW transaction_read_only"))).scalar_one()
        # The first host refused; the connection is to the second, a writable primary.
        assert port == 5432
        assert read_only == "off"
    finally:
        await store.close()
