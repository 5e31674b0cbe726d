"""The alerts' state, on the message store's metadata (migration ``v0008_alerts``
creates the same): one row per (partner, kind), so that every gateway process
evaluating the same store sees, and claims, the same alert."""

from __future__ import annotations

import sqlalchemy as sa

from ..store import metadata

__all__ = ["alert_state"]

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

alert_state = sa.Table(
    "alert_state",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("partner", sa.String(64), nullable=False),  # institution key, or a listener
    sa.Column("kind", sa.String(32), nullable=False),  # queue_depth, oldest_age, ...
    sa.Column("level", sa.Integer(), nullable=False),  # 0 ok, 1 warning, 2 critical
    sa.Column("value", sa.Float()),  # as last evaluated
    sa.Column("threshold", sa.Float()),  # the threshold of its level
    sa.Column("firing_since", sa.DateTime()),  # NULL while not firing
    sa.Column("resolved_at", sa.DateTime()),  # the last time it stopped firing
    # The level last notified (0: its resolution was, or nothing ever was): a process
    # notifies only after moving it from the value it read (compare and set).
    sa.Column("notified_level", sa.Integer(), nullable=False),
    sa.Column("notified_at", sa.DateTime()),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.UniqueConstraint("partner", "kind", name="uq_alert_state_partner_kind"),
)
