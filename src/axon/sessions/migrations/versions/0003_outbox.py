"""The outbox of turns not yet confirmed published, and the request digest of idempotent
messages.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("axon_messages") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
    op.create_table(
        "axon_outbox",
        sa.Column("reply_id", sa.String(64), primary_key=True),
        sa.Column(
            "session_id",
            sa.String(64),
            sa.ForeignKey("axon_sessions.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("job", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_axon_outbox_created", "axon_outbox", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_axon_outbox_created", table_name="axon_outbox")
    op.drop_table("axon_outbox")
    with op.batch_alter_table("axon_messages") as batch:
        batch.drop_column("request_hash")
