"""Each outbox event names the policy decision it was made on in a column of its own
(``outbox_events.decision_id``): a referral status's row is decided again on a release,
a retry or a replay, and today's decision supersedes the ones its events name
(gateway/delivery/_status.py); they were read back out of the event's words, where a
person's reason could name a decision too. Rows older than this migration have none:
their decision is still read from their words. gateway/store/_schema.py defines the
same.

Revision ID: 0014_event_decisions
Revises: 0013_counter_individuals
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_event_decisions"
down_revision = "0013_counter_individuals"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("decision_id", _ID))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:  # SQLite drops columns by copying
        batch.drop_column("decision_id")
