"""Table definitions of the durable store (SQLAlchemy Core), shared by the store and the
migrations. The migrations, not ``create_all``, create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants a BIGINT.
_Pos = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

sessions = sa.Table(
    "axon_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("system_prompt", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_axon_sessions_created", "created_at", "id"),
)

messages = sa.Table(
    "axon_messages",
    metadata,
    # A global, increasing position orders each conversation without a per-session
    # counter that concurrent replicas would have to fight over.
    sa.Column("pos", _Pos, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column(
        "session_id",
        sa.String(64),
        sa.ForeignKey("axon_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reply_id", sa.String(64), nullable=True, unique=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("finish_reason", sa.String(16), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.UniqueConstraint("session_id", "idempotency_key", name="uq_axon_messages_idem"),
    sa.Index("ix_axon_messages_session_pos", "session_id", "pos"),
)
