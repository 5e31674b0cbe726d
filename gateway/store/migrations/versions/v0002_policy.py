"""The cross-border policy's tables: consents, decisions, yearly counters
(gateway/policy/_records.py defines the same).

Revision ID: 0002_policy
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_policy"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "policy_consents",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("consent_id", sa.String(128), nullable=False, unique=True),
        sa.Column("patient_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.Column("imported_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_policy_consents_patient", "policy_consents", ["patient_key"])
    op.create_table(
        "policy_decisions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("message_id", ID, sa.ForeignKey("messages.id", ondelete="CASCADE")),
        sa.Column("decided_at", sa.DateTime(), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("recipient", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(24), nullable=False),
        sa.Column("basis", sa.String(48)),
        sa.Column("agreement", sa.String(128)),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("changes", sa.Text(), nullable=False),
        sa.Column("patients", sa.Text(), nullable=False),
        sa.Column("input", sa.LargeBinary()),
        sa.Column("current", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_policy_decisions_message", "policy_decisions", ["message_id", "id"])
    op.create_index("ix_policy_decisions_current", "policy_decisions", ["outcome", "current"])
    op.create_table(
        "policy_counters",
        sa.Column("year", sa.Integer(), primary_key=True),
        sa.Column("sender", sa.String(64), primary_key=True),
        sa.Column("basis", sa.String(48), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("person", sa.String(64), primary_key=True),
        sa.Column("first_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("policy_counters")
    op.drop_table("policy_decisions")
    op.drop_table("policy_consents")
