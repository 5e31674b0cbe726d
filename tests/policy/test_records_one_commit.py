"""The policy stage keeps its decision and moves the message in one transaction: one
commit per decision (an fsync on SQLite: bench/RESULTS.md), and a failure while moving
the message leaves no decision behind."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from gateway import Converter
from gateway.policy import Policy, PolicyRecords
from gateway.processing import process_message
from gateway.store import Incoming, Store

from .conftest import HKID, NOW, REPO, consent


def _converted(store: Store, converter: Converter) -> tuple[int, bytes]:
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
    receipt = store.receive(Incoming(raw, "cli"))
    process_message(store, converter, receipt.id)
    bundle = store.get(receipt.id).outcomes[-1].output  # type: ignore[union-attr]
    assert bundle is not None
    return receipt.id, bundle


def test_a_decision_takes_one_commit(store: Store, converter: Converter, policy: Policy) -> None:
    records = PolicyRecords(store, policy)
    records.import_consent(consent((HKID, "K583726A"), "HKPMC"), now=NOW)
    message, bundle = _converted(store, converter)
    commits: list[int] = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    sa.event.listen(store.engine, "commit", listener)
    try:
        decision = records.apply(message, bundle, "NSCH", "HKPMC", now=NOW)
    finally:
        sa.event.remove(store.engine, "commit", listener)
    assert decision.outcome == "allow-with-changes"
    assert store.state_of(message) == "outbox"
    assert [d.id for d in records.find(message_id=message)] == [decision.id]
    assert len(commits) == 1


def test_no_decision_is_kept_when_the_message_cannot_move(
    store: Store, converter: Converter, policy: Policy, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = PolicyRecords(store, policy)
    message, bundle = _converted(store, converter)
    add_outcome = Store._add_outcome

    def failing(self: Store, conn: Any, message_id: int, outcome: Any, *rest: Any) -> Any:
        if outcome.stage == "policy":
            raise RuntimeError("disk full")
        return add_outcome(self, conn, message_id, outcome, *rest)

    monkeypatch.setattr(Store, "_add_outcome", failing)
    with pytest.raises(RuntimeError):
        records.apply(message, bundle, "NSCH", "HKPMC", now=NOW)
    assert records.find(message_id=message) == []
    assert store.state_of(message) == "converted"
