"""A multi-host PostgreSQL DSN: the store connects to whichever listed host accepts
writes, so a Multi-AZ failover costs a reconnect, not a configuration change."""

from __future__ import annotations

import pytest

from axon.sessions.sql import SqlSessionStore, make_engine
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
    store = SqlSessionStore(make_engine(url))
    try:
        await store.ping()
    finally:
        await store.close()
