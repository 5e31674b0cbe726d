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
from ._outbox import NEVER_SENT_HOLD, Outbox

__all__ = ["UnsentHold"]

_outbox = metadata.tables["outbox"]
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
                sa.select(o.id, o.state, o.last_error).where(
                    o.message_id == message_id,
                    o.partner == recipient,
                    o.state.in_(_NOT_BEGUN),
                    o.part == 0,
                )
            ).all()
            for row_id, state, was in [*rows, *self._held_unsent(conn, message_id, recipient)]:
                # A row held for another reason keeps that reason in its transition: the
                # person who looks at it (gateway outbox show) sees both holds.
                why = reason if state != "held" else f"{reason} (it was held: {was})"
                self.outbox.move(
                    row_id, state, "held", why, now=now, conn=conn, last_error="policy.held"
                )
                held += 1
        return held

    @staticmethod
    def _held_unsent(
        conn: Connection, message_id: int, recipient: str
    ) -> list[tuple[int, str, str | None]]:
        """Rows held for a reason of delivery's (any code but the policy's own: the
        overwrite guard, another patient's link, our credentials refused or missing, a
        partner gone...), never sent: no part delivered and held before any send, or
        on a send of the first part that the partner refused. Every way out of such a
        hold (a person's release, the worker's once a partner is back:
        ``Outbox.release_known``) decides it again first; the withdrawal holds it for
        the policy here, the one place that knows, so that the reason is in its events
        and only a decision, made again on the day (``Outbound.release``,
        ``recheck_held``), can queue it. One held from ``waiting`` (its send ambiguous:
        the partner may hold it) is left, as a waiting row is; so is a row with a part
        sent: what is there stays there, the rest must follow (the partner holds half a
        record otherwise), and its later parts were decided with the first."""
        o = _outbox.c
        found = conn.execute(
            sa.select(o.id, o.state, o.last_error).where(
                o.message_id == message_id, o.partner == recipient, NEVER_SENT_HOLD
            )
        ).all()
        return [(int(row_id), str(state), was) for row_id, state, was in found]


register_unsent_rows(UnsentHold)
