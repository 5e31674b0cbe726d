"""What the inbound stage keeps in the message store (migration ``v0005_inbound``):

* ``inbound_bundles``: every Bundle a partner sent that the gateway acted on — who sent
  it, how it authenticated, its identifier, the bytes as received (evidence) and the
  answer given; an applied one's ``dedup_key`` makes the same Bundle again return the
  same answer and store nothing twice.
* ``inbound_resources``: one row per version of each stored resource (``current``
  marks the latest): type, logical id, version, patient, status, lastUpdated, JSON.
* ``inbound_identifiers``: the identifiers of each version, for search and for the
  conditional creates and updates of later Bundles.
* ``inbound_beside``: the identifiers written beside each version's references to a
  patient (``Patient/<id>``, the ``patient`` column; any reference at any depth, not
  only the one naming whom the record is about), the system as compared
  (``gateway/fhirsystems.py``) with its type codes; hashed too, so that the identity checks find
  another value of a system in one indexed look-up (migrations ``v0016_inbound_beside``,
  ``v0017_beside_every_reference``).
* ``inbound_tokens``: SMART Backend Services access tokens, only their SHA-256.
* ``inbound_jti``: client-assertion ids already used, until they expire (replay).
"""

from __future__ import annotations

import sqlalchemy as sa

from ..store import metadata

__all__ = ["beside", "bundles", "identifiers", "jtis", "resources", "tokens"]

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

bundles = sa.Table(
    "inbound_bundles",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("received_at", sa.DateTime(), nullable=False),
    sa.Column("partner", sa.String(64), nullable=False),  # institution key, authenticated
    sa.Column("auth", sa.String(16), nullable=False),  # bearer | smart | mtls
    sa.Column("bundle_type", sa.String(32)),
    sa.Column("identifier", sa.String(512)),  # Bundle.identifier "system|value"
    sa.Column("sha256", sa.String(64), nullable=False),  # of the canonical JSON
    # partner|identifier|sha256 hashed, set once applied: the same Bundle again is this row
    sa.Column("dedup_key", sa.String(64), unique=True),
    sa.Column("state", sa.String(16), nullable=False),  # applied | refused
    sa.Column("status", sa.Integer(), nullable=False),  # the HTTP status answered
    sa.Column("response", sa.LargeBinary(), nullable=False),  # the answer's JSON
    sa.Column("raw", sa.LargeBinary()),  # the bytes as received
)
sa.Index("ix_inbound_bundles_partner", bundles.c.partner, bundles.c.id)

resources = sa.Table(
    "inbound_resources",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("logical_id", sa.String(64), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("current", sa.Boolean(), nullable=False),
    sa.Column("partner", sa.String(64)),  # who sent it; NULL: made here (a referral's Task)
    sa.Column(
        "bundle_id", ID, sa.ForeignKey("inbound_bundles.id", ondelete="SET NULL")
    ),  # the Bundle that wrote this version
    # "Patient/<id>" (a stored patient) or "system|value" (a logical reference)
    sa.Column("patient", sa.String(512)),
    sa.Column("status", sa.String(32)),
    sa.Column("last_updated", sa.DateTime(), nullable=False),
    sa.Column("resource", sa.LargeBinary(), nullable=False),  # JSON, meta filled in
    sa.UniqueConstraint("resource_type", "logical_id", "version", name="uq_inbound_version"),
)
sa.Index(
    "ix_inbound_resources_current",
    resources.c.resource_type,
    resources.c.current,
    resources.c.last_updated,
)
sa.Index("ix_inbound_resources_patient", resources.c.patient, resources.c.resource_type)

identifiers = sa.Table(
    "inbound_identifiers",
    metadata,
    sa.Column(
        "resource_row",
        ID,
        sa.ForeignKey("inbound_resources.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("n", sa.Integer(), primary_key=True),  # position in resource.identifier
    sa.Column("resource_type", sa.String(64), nullable=False),
    sa.Column("system", sa.String(512)),
    sa.Column("value", sa.String(512), nullable=False),
)
sa.Index(
    "ix_inbound_identifiers_value",
    identifiers.c.resource_type,
    identifiers.c.value,
    identifiers.c.system,
)

beside = sa.Table(
    "inbound_beside",
    metadata,
    sa.Column(
        "resource_row",
        ID,
        sa.ForeignKey("inbound_resources.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("n", sa.Integer(), primary_key=True),
    sa.Column("patient", sa.String(512), nullable=False),  # as inbound_resources.patient
    sa.Column("system", sa.Text(), nullable=False),  # as compared (system_key); '' for none
    sa.Column("value", sa.Text(), nullable=False),
    sa.Column("types", sa.Text(), nullable=False),  # the type codes, a sorted JSON array
    # SHA-256 (hex) of system and value: an index entry of bounded size whatever is sent
    sa.Column("system_hash", sa.String(64), nullable=False),
    sa.Column("value_hash", sa.String(64), nullable=False),
)
sa.Index(
    "ix_inbound_beside_patient",
    beside.c.patient,
    beside.c.system_hash,
    beside.c.value_hash,
)

tokens = sa.Table(
    "inbound_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # SHA-256 hex: never the token
    sa.Column("partner", sa.String(64), nullable=False),
    sa.Column("scope", sa.Text(), nullable=False),
    sa.Column("issued_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
)
sa.Index("ix_inbound_tokens_expires", tokens.c.expires_at)

jtis = sa.Table(
    "inbound_jti",
    metadata,
    sa.Column("issuer", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(255), primary_key=True),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
)
sa.Index("ix_inbound_jti_expires", jtis.c.expires_at)
