"""Table definitions of the durable store (SQLAlchemy Core), shared by the store and the
migrations. The migrations, not ``create_all``, create them."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants a BIGINT.
_Pos = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: Rows from before tenants existed belong to this tenant (migration 0002).
DEFAULT_TENANT = "default"

sessions = sa.Table(
    "axon_sessions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    # Every query filters by tenant: a session of another tenant is as absent as none.
    sa.Column("tenant", sa.String(64), nullable=False, server_default=DEFAULT_TENANT),
    sa.Column("title", sa.String(200), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("system_prompt", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_axon_sessions_created", "created_at", "id"),
    sa.Index("ix_axon_sessions_tenant_id", "tenant", "id"),
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
    sa.Column("tenant", sa.String(64), nullable=False, server_default=DEFAULT_TENANT),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reply_id", sa.String(64), nullable=True, unique=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),
    sa.Column("finish_reason", sa.String(16), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.UniqueConstraint("session_id", "idempotency_key", name="uq_axon_messages_idem"),
    sa.Index("ix_axon_messages_session_pos", "session_id", "pos"),
)

#: Jobs of turns stored but not yet confirmed published, written in the user message's
#: transaction: a session manager that dies between the two leaves its turn here, and any
#: replica publishes it again (migration 0003).
outbox = sa.Table(
    "axon_outbox",
    metadata,
    sa.Column("reply_id", sa.String(64), primary_key=True),
    sa.Column(
        "session_id",
        sa.String(64),
        sa.ForeignKey("axon_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("job", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_axon_outbox_created", "created_at"),
)

api_keys = sa.Table(
    "axon_api_keys",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    # The first characters of the key, stored in clear to find the row; the rest of the
    # key is only ever stored as its SHA-256 digest.
    sa.Column("prefix", sa.String(32), nullable=False, unique=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("requests_per_minute", sa.Integer, nullable=True),
    sa.Column("tokens_per_minute", sa.Integer, nullable=True),
    sa.Column("max_streams", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.Index("ix_axon_api_keys_tenant", "tenant"),
)
