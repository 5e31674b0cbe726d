"""A consent withdrawn: the delivery outbox's part. The policy says which transfers were
queued on a decision the withdrawn consent could have allowed (its decisions); the rows
of those not sent yet go back to ``held`` here, in the withdrawal's transaction, and the
outbound path decides them again (``Outbound.recheck_held``). Registered with the policy
when this package is imported (``register_unsent_rows``): delivery, the later stage,
calls into the policy's interface, and the policy imports nothing of delivery."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..policy import register_unsent_rows
from ..store import Store, metadata
from ._outbox import UNKNOWN_PARTNER, Outbox

__all__ = ["UnsentHold"]

_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]
# Rows not begun: queued or waiting for a retry, no part sent. Rows being sent, whose
# send was ambiguous (``waiting``) or begun (a part sent) are left: the partner may
# already hold them.
_NOT_BEGUN = ("pending", "retrying")


class UnsentHold:
    """:class:`gateway.policy.UnsentRows` over a store's outbox."""

    def __init__(self, store: Store, outbox: Outbox | None = None) -> None:
        self.outbox = outbox or Outbox(store)

    def hold_unsent(self, conn: Connection, pairs: Sequence[tuple[int, str]], reason: str) -> int:
        o = _outbox.c
        now = self.outbox.clock()
        held = 0
        for message_id, recipient in pairs:
            rows = conn.execute(
                sa.select(o.id, o.state).where(
                    o.message_id == message_id,
                    o.partner == recipient,
                    o.state.in_(_NOT_BEGUN),
                    o.part == 0,
                )
            ).all()
            for row_id, state in [*rows, *self._gone_unsent(conn, message_id, recipient)]:
                self.outbox.move(
                    row_id, state, "held", reason, now=now, conn=conn, last_error="policy.held"
                )
                held += 1
        return held

    @staticmethod
    def _gone_unsent(conn: Connection, message_id: int, recipient: str) -> list[tuple[int, str]]:
        """Rows held only because their partner was not configured, held before any
        send (from a state not begun, no part sent): the worker queues them again by
        itself once the partner is back (``Outbox.release_known``), with no decision
        made again, so a withdrawal holds them for the policy too. One held from
        ``waiting`` (its send ambiguous: the partner may hold it) is left, as a waiting
        row is."""
        o, e, later = _outbox.c, _events.c, _events.alias("later").c
        last = sa.select(sa.func.max(later.id)).where(later.outbox_id == o.id).scalar_subquery()
        held_unbegun = (
            sa.select(e.id)
            .where(e.id == last, e.to_state == "held", e.from_state.in_(_NOT_BEGUN))
            .exists()
        )
        found = conn.execute(
            sa.select(o.id, o.state).where(
                o.message_id == message_id,
                o.partner == recipient,
                o.state == "held",
                o.last_error == UNKNOWN_PARTNER,
                o.part == 0,
                held_unbegun,
            )
        ).all()
        return [(int(row_id), str(state)) for row_id, state in found]


register_unsent_rows(UnsentHold)
