"""Links between records at the partner check the patient (docs/delivery.md, "Links at
the partner"): each ``outbox_links`` row keeps the hashed identifiers of the patient of
the resource that provides or needs it, so a report never links to another patient's
study that shares its accession number or Study UID. gateway/store/_schema.py defines
the same. Rows queued before this migration have none: a link of theirs is held.

Revision ID: 0011_link_patients
Revises: 0010_dicom_known
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_link_patients"
down_revision = "0010_dicom_known"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("outbox_links", sa.Column("patients", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("outbox_links") as batch:  # SQLite drops columns by copying
        batch.drop_column("patients")
