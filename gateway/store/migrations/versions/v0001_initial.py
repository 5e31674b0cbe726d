"""The message store: messages, their patients, outcomes, and DICOM instances.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(255)),
        sa.Column("auth_sender", sa.String(255)),
        sa.Column("sender", sa.String(255)),
        sa.Column("control_id", sa.String(255)),
        sa.Column("message_type", sa.String(64)),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("charset", sa.String(32)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.LargeBinary()),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("dedup_key", sa.String(64), unique=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("pruned_at", sa.DateTime()),
    )
    op.create_index("ix_messages_state_id", "messages", ["state", "id"])
    op.create_index("ix_messages_state_sender_id", "messages", ["state", "sender", "id"])
    op.create_index("ix_messages_sender_id", "messages", ["sender", "id"])
    op.create_index("ix_messages_type_id", "messages", ["message_type", "id"])
    op.create_index("ix_messages_control_id", "messages", ["control_id"])
    op.create_index("ix_messages_received_id", "messages", ["received_at", "id"])

    op.create_table(
        "message_patients",
        sa.Column(
            "message_id",
            ID,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("identifier", sa.String(255), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_index("ix_patients_identifier", "message_patients", ["identifier", "message_id"])
    op.create_index("ix_patients_value", "message_patients", ["value", "message_id"])

    op.create_table(
        "outcomes",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column(
            "message_id",
            ID,
            sa.ForeignKey("messages.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column("output", sa.LargeBinary()),
        sa.Column("issues", sa.Text()),
        sa.Column("current", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_outcomes_message", "outcomes", ["message_id", "id"])

    op.create_table(
        "dicom_instances",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("sop_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("peer", sa.String(255)),
        sa.Column("sender", sa.String(255)),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("message_id", ID, sa.ForeignKey("messages.id", ondelete="SET NULL")),
    )
    op.create_index("ix_dicom_study", "dicom_instances", ["study_uid", "message_id"])
    op.create_index("ix_dicom_pending", "dicom_instances", ["message_id", "received_at"])


def downgrade() -> None:
    op.drop_table("dicom_instances")
    op.drop_table("outcomes")
    op.drop_table("message_patients")
    op.drop_table("messages")
