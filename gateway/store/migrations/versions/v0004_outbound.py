"""The outbound path (gateway/delivery/_outbound.py): which record of its message an
outbox row is and for what purpose (a held record is decided again from them), the row
it replays, and the links between records at the partner (a report waits for its study:
``outbox_links``, ``links_until``). gateway/store/_schema.py defines the same.

Revision ID: 0004_outbound
Revises: 0003_outbox
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_outbound"
down_revision = "0003_outbox"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("outbox", sa.Column("record", sa.Integer()))
    op.add_column("outbox", sa.Column("purpose", sa.String(32)))
    op.add_column("outbox", sa.Column("replay_of", ID))
    op.add_column("outbox", sa.Column("links_until", sa.DateTime()))
    op.create_table(
        "outbox_links",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", ID, sa.ForeignKey("outbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
    )
    op.create_index("ix_outbox_links_ref", "outbox_links", ["ref", "role"])
    op.create_index("ix_outbox_links_row", "outbox_links", ["outbox_id", "role"])


def downgrade() -> None:
    op.drop_table("outbox_links")
    with op.batch_alter_table("outbox") as batch:  # SQLite drops columns by copying
        for name in ("links_until", "replay_of", "purpose", "record"):
            batch.drop_column(name)
