"""The audit log's tables, on the message store's metadata (migration ``v0006_audit``
creates the same). ``audit_entries`` is append-only: the gateway only ever inserts."""

from __future__ import annotations

import sqlalchemy as sa

from ..store import metadata

__all__ = ["entries", "heads", "state"]

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# One row per AuditEvent, numbered from 0 in the order it joined the tree.
entries = sa.Table(
    "audit_entries",
    metadata,
    sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("event_id", sa.String(64), nullable=False, unique=True),  # AuditEvent.id
    sa.Column("recorded", sa.DateTime(), nullable=False),  # AuditEvent.recorded, naive UTC
    sa.Column("kind", sa.String(32), nullable=False),  # received, converted, ... (_events)
    # Look-up keys read from the event (verify checks they still say what it says).
    sa.Column("patient", sa.String(255)),  # "Patient/<id>", its identifier "system|value"
    sa.Column("partner", sa.String(64)),  # institution key of the other side
    sa.Column("canonical", sa.LargeBinary(), nullable=False),  # RFC 8785 JSON: the leaf entry
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),  # SHA-256(0x00 || canonical)
    sa.Column("root", sa.LargeBinary(32), nullable=False),  # MTH of entries 0..idx
)
sa.Index("ix_audit_entries_patient", entries.c.patient, entries.c.idx)
sa.Index("ix_audit_entries_partner", entries.c.partner, entries.c.idx)
sa.Index("ix_audit_entries_recorded", entries.c.recorded, entries.c.idx)

# The tree's head as the appender keeps it: size and the frontier (one row, id 1).
state = sa.Table(
    "audit_state",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
    sa.Column("size", sa.BigInteger(), nullable=False),
    sa.Column("frontier", sa.LargeBinary(), nullable=False),  # 32-byte roots, largest first
)

# Signed tree heads: the JWS (its x5c header carries the certificate chain) over the
# canonical JSON {log, tree_size, root_hash, timestamp}.
heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("tree_size", sa.BigInteger(), nullable=False),
    sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("timestamp", sa.BigInteger(), nullable=False),  # milliseconds since the epoch
    sa.Column("signed_at", sa.DateTime(), nullable=False),
    sa.Column("jws", sa.Text(), nullable=False),
)
sa.Index("ix_audit_heads_size", heads.c.tree_size, heads.c.id)
