"""The policy counters indexed by individual: the counting's reads and deletes of an
individual's rows (``_KNOWN``, ``_ROWS_OF``, ``_MERGED``: ``individual IN (...)`` under
the counter's key) and the count of individuals (``count(DISTINCT individual)``) went
through the primary key, ordered by pseudonym: each a scan of the counter's whole
year/sender/basis/category range; by this index a seek per individual, and the count
an index-only walk in ``individual`` order (no sort). gateway/policy/_records.py
defines the same.

Revision ID: 0013_counter_individuals
Revises: 0012_decision_consents
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0013_counter_individuals"
down_revision = "0012_decision_consents"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_policy_counters_individual",
        "policy_counters",
        ["year", "sender", "basis", "category", "individual"],
    )


def downgrade() -> None:
    op.drop_index("ix_policy_counters_individual", table_name="policy_counters")
