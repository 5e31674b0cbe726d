"""``inbound_beside`` filled again for every current record: it held the identifiers
written beside the reference naming whom a record is about (``subject``...) only, so
another patient's number beside a second reference to the same ``Patient/<id>`` (an
``asserter``, a ``performer``, a contained resource's ``subject``) was kept, yet held
against no later record, nor against a Patient created under that id. Now every
reference to a ``Patient/<id>`` at any depth has its rows (gateway/fhirsystems.py,
``beside``), the writes and this backfill alike: a store kept before would otherwise
miss those of its records.

Revision ID: 0017_beside_every_reference
Revises: 0016_inbound_beside
Create Date: 2026-12-07
"""

from __future__ import annotations

import orjson
import sqlalchemy as sa
from alembic import op

from gateway.fhirsystems import beside_rows  # what the writes fill, the same way

revision = "0017_beside_every_reference"
down_revision = "0016_inbound_beside"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_BATCH = 500  # records read at once by the backfill


def upgrade() -> None:
    conn = op.get_bind()
    beside = sa.table(
        "inbound_beside",
        sa.column("resource_row", ID),
        sa.column("n", sa.Integer()),
        sa.column("patient", sa.String(512)),
        sa.column("system", sa.Text()),
        sa.column("value", sa.Text()),
        sa.column("types", sa.Text()),
        sa.column("system_hash", sa.String(64)),
        sa.column("value_hash", sa.String(64)),
    )
    resources = sa.table(
        "inbound_resources",
        sa.column("id", ID),
        sa.column("current", sa.Boolean()),
        sa.column("resource", sa.LargeBinary()),
    )
    conn.execute(beside.delete())
    after = 0
    while True:  # keyset pages: a store of many records is not read at once
        page = conn.execute(
            sa.select(resources.c.id, resources.c.resource)
            .where(resources.c.id > after, resources.c.current.is_(True))
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
            conn.execute(beside.insert(), rows)
        after = int(page[-1].id)


def downgrade() -> None:
    """The rows 0016 wrote stay valid to it (a superset: more rows, each still an
    identifier written beside a reference to its patient); nothing to undo."""
