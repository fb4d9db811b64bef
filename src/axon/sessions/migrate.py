"""Schema migrations (Alembic) for the durable store: ``axon db upgrade``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from axon.sessions.database import engine_url, ensure_sqlite_dir

_SCRIPTS = Path(__file__).parent / "migrations"


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    # ConfigParser treats % as interpolation; URLs may carry %-escaped passwords.
    # Several hosts (libpq's h1:p1,h2:p2) become the form SQLAlchemy parses.
    cfg.set_main_option("sqlalchemy.url", engine_url(url).replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Must not run inside an event loop."""
    ensure_sqlite_dir(url)
    command.upgrade(_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` from async code (the migration runs its own loop)."""
    await asyncio.to_thread(upgrade_sync, url, revision)
