"""The audit log: entries (canonical AuditEvents and their RFC 9162 leaf hashes), the
appender's frontier, signed tree heads (gateway/audit/_tables.py defines the same;
docs/audit.md).

Revision ID: 0006_audit
Revises: 0003_outbox
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_audit"
down_revision = "0005_inbound"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(64), nullable=False, unique=True),
        sa.Column("recorded", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("patient", sa.String(255)),
        sa.Column("partner", sa.String(64)),
        sa.Column("canonical", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
    )
    op.create_index("ix_audit_entries_patient", "audit_entries", ["patient", "idx"])
    op.create_index("ix_audit_entries_partner", "audit_entries", ["partner", "idx"])
    op.create_index("ix_audit_entries_recorded", "audit_entries", ["recorded", "idx"])
    audit_state = op.create_table(
        "audit_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
    )
    # The one state row exists before any writer: concurrent first appends lock it.
    op.bulk_insert(audit_state, [{"id": 1, "size": 0, "frontier": b""}])
    op.create_table(
        "audit_heads",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("tree_size", sa.BigInteger(), nullable=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.Column("jws", sa.Text(), nullable=False),
    )
    op.create_index("ix_audit_heads_size", "audit_heads", ["tree_size", "id"])


def downgrade() -> None:
    op.drop_table("audit_heads")
    op.drop_table("audit_state")
    op.drop_table("audit_entries")
