"""The inbound stage: Bundles received from partners, the resources they stored (one row
per version), their identifiers, SMART access tokens and used client-assertion ids
(gateway/inbound/_schema.py defines the same; docs/inbound.md).

Revision ID: 0005_inbound
Revises: 0003_outbox
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_inbound"
down_revision = "0004_outbound"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "inbound_bundles",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("auth", sa.String(16), nullable=False),
        sa.Column("bundle_type", sa.String(32)),
        sa.Column("identifier", sa.String(512)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("dedup_key", sa.String(64), unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("raw", sa.LargeBinary()),
    )
    op.create_index("ix_inbound_bundles_partner", "inbound_bundles", ["partner", "id"])
    op.create_table(
        "inbound_resources",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("logical_id", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("partner", sa.String(64)),
        sa.Column("bundle_id", ID, sa.ForeignKey("inbound_bundles.id", ondelete="SET NULL")),
        sa.Column("patient", sa.String(512)),
        sa.Column("status", sa.String(32)),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("resource", sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint("resource_type", "logical_id", "version", name="uq_inbound_version"),
    )
    op.create_index(
        "ix_inbound_resources_current",
        "inbound_resources",
        ["resource_type", "current", "last_updated"],
    )
    op.create_index(
        "ix_inbound_resources_patient", "inbound_resources", ["patient", "resource_type"]
    )
    op.create_table(
        "inbound_identifiers",
        sa.Column(
            "resource_row",
            ID,
            sa.ForeignKey("inbound_resources.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("n", sa.Integer(), primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("system", sa.String(512)),
        sa.Column("value", sa.String(512), nullable=False),
    )
    op.create_index(
        "ix_inbound_identifiers_value",
        "inbound_identifiers",
        ["resource_type", "value", "system"],
    )
    op.create_table(
        "inbound_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("partner", sa.String(64), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("issued_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_inbound_tokens_expires", "inbound_tokens", ["expires_at"])
    op.create_table(
        "inbound_jti",
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_inbound_jti_expires", "inbound_jti", ["expires_at"])


def downgrade() -> None:
    op.drop_table("inbound_jti")
    op.drop_table("inbound_tokens")
    op.drop_table("inbound_identifiers")
    op.drop_table("inbound_resources")
    op.drop_table("inbound_bundles")
