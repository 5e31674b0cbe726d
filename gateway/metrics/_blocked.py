"""The delivery codes of credentials problems, defined once (the delivery worker sets
them, the gauge and the alert count them), and the outbox rows they block, per partner
and code: one query for the ``gateway_outbox_credentials_blocked`` gauge and the
``credentials_refused`` alert (gateway/alerts), so the two never count differently.

The delivery worker (gateway/delivery/_worker.py, docs/delivery.md) holds a row whose
partner refused our credentials (401/403: ``delivery.credentials-refused``) at once, and
retries one it had no token for (``delivery.token-file``, ``delivery.token-endpoint``),
then holds it. A release clears ``last_error``, so a released row no longer counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlalchemy as sa

__all__ = ["CREDENTIALS_CODES", "CREDENTIALS_REFUSED", "NO_TOKEN", "credentials_blocked"]

CREDENTIALS_REFUSED = "delivery.credentials-refused"
NO_TOKEN = ("delivery.token-file", "delivery.token-endpoint")
CREDENTIALS_CODES = (CREDENTIALS_REFUSED, *NO_TOKEN)


def credentials_blocked(outbox: sa.Table) -> sa.Select[str, str, int]:
    """(partner, code, rows): held for a credentials code, or retrying under a token
    code; by the outbox's (state, next_at) index, as its stats are read."""
    import sqlalchemy as sa  # late: importing gateway.metrics decides and costs nothing

    o = outbox.c
    return (
        sa.select(o.partner, o.last_error, sa.func.count())
        .where(
            sa.or_(
                sa.and_(o.state == "held", o.last_error.in_(CREDENTIALS_CODES)),
                sa.and_(o.state == "retrying", o.last_error.in_(NO_TOKEN)),
            )
        )
        .group_by(o.partner, o.last_error)
    )
