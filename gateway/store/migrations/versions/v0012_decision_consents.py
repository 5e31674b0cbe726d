"""Policy decisions keep their consents and their individuals; counters count people.

``policy_decisions.consents``: the Consent.ids a transfer rests on (its audit event names
them; a decision read back shows them). ``policy_decisions.people``: each Patient of the
record by the keyed pseudonyms of its identifiers, each tagged with its identifier
system (``tag:pseudonym``, the tag a short hash of the system's URI), so that the
transfer report counts individuals, not identifiers, and never joins two people through
an identifier they share (two different values of one system: docs/policy.md, "Who is
an individual"). ``policy_counters.individual``: the individual each counted pseudonym
(tagged likewise) belongs to (rows sharing it are one person), part of the key: a
pseudonym several people share is a row of each. Rows older than this migration:
decisions without consents or people (NULL: the report takes each of their pseudonyms
as a set of its own), counter rows each their own individual (as counted then), their
pseudonyms bare (system not known: never joined into a conflict).
gateway/policy/_records.py defines the same.

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

_KEY = "year, sender, basis, category"


def _counters(name: str, *, individual: bool) -> None:
    """policy_counters as v0002 made it, or keyed by individual too (``individual``)."""
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("year", sa.Integer(), primary_key=True),
        sa.Column("sender", sa.String(64), primary_key=True),
        sa.Column("basis", sa.String(48), primary_key=True),
        sa.Column("category", sa.String(32), primary_key=True),
        sa.Column("person", sa.String(64), primary_key=True),
        sa.Column("first_at", sa.DateTime(), nullable=False),
    ]
    if individual:
        columns.append(sa.Column("individual", sa.String(64), primary_key=True))
    op.create_table(name, *columns)


def upgrade() -> None:
    op.add_column("policy_decisions", sa.Column("people", sa.Text()))
    op.add_column("policy_decisions", sa.Column("consents", sa.Text()))
    # The key changes (a row per individual holding a pseudonym): copied into a new table,
    # each old row its own individual.
    _counters("policy_counters_0012", individual=True)
    op.execute(
        f"INSERT INTO policy_counters_0012 ({_KEY}, person, first_at, individual) "
        f"SELECT {_KEY}, person, first_at, person FROM policy_counters"
    )
    op.drop_table("policy_counters")
    op.rename_table("policy_counters_0012", "policy_counters")


def downgrade() -> None:
    _counters("policy_counters_0011", individual=False)
    op.execute(  # one row per pseudonym again, as first counted
        f"INSERT INTO policy_counters_0011 ({_KEY}, person, first_at) "
        f"SELECT {_KEY}, person, MIN(first_at) FROM policy_counters "
        f"GROUP BY {_KEY}, person"
    )
    op.drop_table("policy_counters")
    op.rename_table("policy_counters_0011", "policy_counters")
    with op.batch_alter_table("policy_decisions") as batch:  # SQLite drops columns by copying
        batch.drop_column("consents")
        batch.drop_column("people")
