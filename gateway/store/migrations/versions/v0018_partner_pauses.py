"""``partner_pauses``: a partner's ``Retry-After`` kept in the store, so that every
delivery worker (``gateway work --workers N``, several machines on one store) pauses
its requests to that partner, not only the worker the partner answered: before, each
worker learnt the pause from its own refused request, so a partner asking for quiet
still received one more request from each other worker. gateway/store/_schema.py
defines the same.

Revision ID: 0018_partner_pauses
Revises: 0017_beside_every_reference
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018_partner_pauses"
down_revision = "0017_beside_every_reference"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partner_pauses",
        sa.Column("partner", sa.String(64), primary_key=True),
        sa.Column("base", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("asked_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("partner_pauses")
