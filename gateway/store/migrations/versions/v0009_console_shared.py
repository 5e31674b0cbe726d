"""What the console's API worker processes share (gateway/console/_tables.py defines the
same): the saved searches and the failed sign-ins the rate limiter counts.

Revision ID: 0009_console_shared
Revises: 0008_alerts
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_console_shared"
down_revision = "0008_alerts"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "console_searches",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "user_id",
            ID,
            sa.ForeignKey("console_users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("criteria", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_console_searches_created", "console_searches", ["created_at"])
    op.create_table(
        "console_login_failures",
        sa.Column("key_hash", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_console_login_failures_window", "console_login_failures", ["window_start"])


def downgrade() -> None:
    op.drop_table("console_login_failures")
    op.drop_table("console_searches")
