"""Policy decisions keep their consents and their individuals; counters count people.

``policy_decisions.consents``: the Consent.ids a transfer rests on (its audit event names
them; a decision read back shows them). ``policy_decisions.people``: each Patient of the
record by the keyed pseudonyms of its identifiers, so that the transfer report counts
individuals, not identifiers. ``policy_counters.individual``: the individual each
counted pseudonym belongs to (rows sharing it are one person). Rows older than this
migration: decisions without consents or people (NULL: the report takes each of their
pseudonyms as a set of its own), counter rows each their own individual (as counted
then). gateway/policy/_records.py defines the same.

Revision ID: 0012_decision_consents
Revises: 0011_link_patients
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_decision_consents"
down_revision = "0011_link_patients"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("policy_decisions", sa.Column("people", sa.Text()))
    op.add_column("policy_decisions", sa.Column("consents", sa.Text()))
    op.add_column("policy_counters", sa.Column("individual", sa.String(64)))
    op.execute("UPDATE policy_counters SET individual = person")


def downgrade() -> None:
    with op.batch_alter_table("policy_counters") as batch:  # SQLite drops columns by copying
        batch.drop_column("individual")
    with op.batch_alter_table("policy_decisions") as batch:
        batch.drop_column("consents")
        batch.drop_column("people")
