"""The alerts' state (gateway/alerts/_tables.py defines the same): one row per partner
and kind, with since when it fires, when it resolved and the level last notified.

Revision ID: 0008_alerts
Revises: 0006_audit
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_alerts"
down_revision = "0007_console"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "alert_state",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float()),
        sa.Column("threshold", sa.Float()),
        sa.Column("firing_since", sa.DateTime()),
        sa.Column("resolved_at", sa.DateTime()),
        sa.Column("notified_level", sa.Integer(), nullable=False),
        sa.Column("notified_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("partner", "kind", name="uq_alert_state_partner_kind"),
    )


def downgrade() -> None:
    op.drop_table("alert_state")
