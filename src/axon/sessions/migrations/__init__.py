"""Alembic migrations of the durable store; the same revisions run on SQLite and PostgreSQL."""
