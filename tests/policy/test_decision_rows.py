"""A decision's rows as the stage writes them on SQLite (straight through the driver in
the stage's transaction) read back the same through SQLAlchemy: the time, the rules,
the Bundle kept while held, and ``current`` moving to the newest decision of a message."""

from __future__ import annotations

import sqlalchemy as sa

from gateway import Converter
from gateway.policy import Policy, PolicyRecords
from gateway.policy._records import decisions
from gateway.processing import process_message
from gateway.store import Incoming, Store

from .conftest import HKID, NOW, REPO, consent


def test_decision_rows_read_back_as_written(
    store: Store, converter: Converter, policy: Policy
) -> None:
    records = PolicyRecords(store, policy)
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    process_message(store, converter, message)
    bundle = store.get(message).outcomes[-1].output  # type: ignore[union-attr]
    assert bundle is not None

    held = records.apply(message, bundle, "NSCH", "HKPMC", now=NOW)
    records.import_consent(consent((HKID, "K583726A"), "HKPMC"), now=NOW)
    allowed = records.find(message_id=message)[0]
    assert held.outcome == "hold" and allowed.outcome == "allow-with-changes"

    back = records.get(held.id or 0)
    assert (back.decided_at, back.sender, back.recipient, back.purpose) == (
        NOW,
        "nsch",
        "hkpmc",
        "referral",
    )
    assert [r.to_json() for r in back.results] == [r.to_json() for r in held.results]
    assert back.patients == held.patients and back.message_id == message
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(decisions.c.id, decisions.c.current, decisions.c.input)
            .where(decisions.c.message_id == message)
            .order_by(decisions.c.id)
        ).all()
    # The held one superseded (its Bundle no longer kept), the release current.
    assert [(r.id, r.current, r.input) for r in rows] == [
        (held.id, False, None),
        (allowed.id, True, None),
    ]
    assert records.find(outcome="hold") == []
