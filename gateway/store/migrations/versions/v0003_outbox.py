"""The delivery stage's outbox: one row per (record, partner), and its transitions
(gateway/store/_schema.py defines the same; docs/delivery.md).

Revision ID: 0003_outbox
Revises: 0002_policy
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_outbox"
down_revision = "0002_policy"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", ID, sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("label", sa.String(255)),
        sa.Column("order_key", sa.String(255)),
        sa.Column("dedup_key", sa.String(64), nullable=False, unique=True),
        sa.Column("parts", sa.LargeBinary(), nullable=False),
        sa.Column("part_count", sa.Integer(), nullable=False),
        sa.Column("part", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(), nullable=False),
        sa.Column("lease_until", sa.DateTime()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.String(64)),
        sa.Column("last_response", sa.Text()),
    )
    op.create_index("ix_outbox_state_next", "outbox", ["state", "next_at"])
    op.create_index("ix_outbox_order", "outbox", ["partner", "order_key", "id"])
    op.create_index("ix_outbox_message", "outbox", ["message_id"])
    op.create_table(
        "outbox_events",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", ID, sa.ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("part", sa.Integer()),
        sa.Column("status", sa.Integer()),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_outbox_events_row", "outbox_events", ["outbox_id", "id"])


def downgrade() -> None:
    op.drop_table("outbox_events")
    op.drop_table("outbox")
