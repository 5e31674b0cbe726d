"""The identifiers written beside a stored record's reference to its patient
(``inbound_beside``: patient reference, system as compared, value, type codes, the
record's row), kept as each record is written: the identity check of an identifier
beside a reference to an unstored ``Patient/<id>`` read every record kept under that id
(~150 ms with 2,000 of them), now one indexed look-up. Filled here for the current
records kept before (the same function the writes use, gateway/fhirsystems.py),
so that a mismatch with them is still refused. gateway/inbound/_schema.py defines the
same.

Revision ID: 0016_inbound_beside
Revises: 0015_console_outcomes
Create Date: 2026-12-07
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from gateway.fhirsystems import beside_rows  # what the writes fill, the same way

revision = "0016_inbound_beside"
down_revision = "0015_console_outcomes"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BATCH = 500  # records read at once by the backfill


def upgrade() -> None:
    table = op.create_table(
        "inbound_beside",
        sa.Column(
            "resource_row",
            ID,
            sa.ForeignKey("inbound_resources.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("n", sa.Integer(), primary_key=True),
        sa.Column("patient", sa.String(512), nullable=False),
        sa.Column("system", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("types", sa.Text(), nullable=False),
        sa.Column("system_hash", sa.String(64), nullable=False),
        sa.Column("value_hash", sa.String(64), nullable=False),
    )
    op.create_index(
        "ix_inbound_beside_patient",
        "inbound_beside",
        ["patient", "system_hash", "value_hash"],
    )
    assert table is not None
    _backfill(table)


def _backfill(table: sa.Table) -> None:
    """The rows of the current records kept under a ``Patient/<id>`` before this
    migration, by keyset pages (a store of many records is not read at once)."""
    conn = op.get_bind()
    resources = sa.table(
        "inbound_resources",
        sa.column("id", ID),
        sa.column("current", sa.Boolean()),
        sa.column("patient", sa.String(512)),
        sa.column("resource", sa.LargeBinary()),
    )
    after = 0
    while True:
        page = conn.execute(
            sa.select(resources.c.id, resources.c.patient, resources.c.resource)
            .where(
                resources.c.id > after,
                resources.c.current.is_(True),
                resources.c.patient.like("Patient/%"),
            )
            .order_by(resources.c.id)
            .limit(_BATCH)
        ).all()
        if not page:
            return
        rows = [
            row
            for found in page
            for row in beside_rows(int(found.id), orjson.loads(found.resource))
        ]
        if rows:
            conn.execute(table.insert(), rows)
        after = int(page[-1].id)


def downgrade() -> None:
    op.drop_index("ix_inbound_beside_patient", table_name="inbound_beside")
    op.drop_table("inbound_beside")
