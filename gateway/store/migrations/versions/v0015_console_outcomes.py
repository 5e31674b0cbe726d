"""A console action refused (a release the policy still holds, a retry of a row that is
not dead...) is kept too, with its outcome (``console_actions.outcome``: done or
refused) and the refusal (``refusal``: its error code and message, which name no
patient data): before, only the ones done were kept, so the message's history showed
nobody had tried. Rows older than this migration have neither: they were all done.
gateway/console/_tables.py defines the same.

Revision ID: 0015_console_outcomes
Revises: 0014_event_decisions
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_console_outcomes"
down_revision = "0014_event_decisions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("console_actions", sa.Column("outcome", sa.String(16)))
    op.add_column("console_actions", sa.Column("refusal", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("console_actions") as batch:  # SQLite drops columns by copying
        batch.drop_column("refusal")
        batch.drop_column("outcome")
