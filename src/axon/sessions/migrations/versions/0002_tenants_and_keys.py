"""Tenants on sessions and messages (existing rows move to the default tenant), and API keys.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A server default fills every existing row in the same statement: no separate
    # backfill that a crash could leave half done.
    with op.batch_alter_table("axon_sessions") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(64), nullable=False, server_default="default")
        )
        batch.create_index("ix_axon_sessions_tenant_id", ["tenant", "id"])
    with op.batch_alter_table("axon_messages") as batch:
        batch.add_column(
            sa.Column("tenant", sa.String(64), nullable=False, server_default="default")
        )
    op.create_table(
        "axon_api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False, unique=True),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("requests_per_minute", sa.Integer, nullable=True),
        sa.Column("tokens_per_minute", sa.Integer, nullable=True),
        sa.Column("max_streams", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_axon_api_keys_tenant", "axon_api_keys", ["tenant"])


def downgrade() -> None:
    op.drop_table("axon_api_keys")
    with op.batch_alter_table("axon_messages") as batch:
        batch.drop_column("tenant")
    with op.batch_alter_table("axon_sessions") as batch:
        batch.drop_index("ix_axon_sessions_tenant_id")
        batch.drop_column("tenant")
