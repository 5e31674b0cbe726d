"""The SOP Instance UIDs the DICOM listeners took of each study, kept through pruning
(retention drops the instances themselves): a later commit that lacks some of them is
refused instead of replacing the partner's ImagingStudy with a partial one.

Revision ID: 0010_dicom_known
Revises: 0009_console_shared
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_dicom_known"
down_revision = "0009_console_shared"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "dicom_known_studies",
        sa.Column("study_uid", sa.String(64), primary_key=True),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("sop_uids", sa.LargeBinary(), nullable=False),
        sa.Column("message_id", ID, sa.ForeignKey("messages.id", ondelete="SET NULL")),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("dicom_known_studies")
