"""The session manager and its stores: durable history (SQLAlchemy: SQLite or PostgreSQL)
and the hot cache of recent turns (memory or Redis)."""
