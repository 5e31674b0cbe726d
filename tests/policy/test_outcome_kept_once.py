"""The Bundle that leaves is kept once: when the outbound path queues it, the outbox row
keeps it (as the partner gets it) and the message's ``policy`` outcome names it by its
SHA-256 instead of a second ~35 KB copy in the same transaction; a held record's release
keeps its decision and the row's move in one transaction."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest

from gateway import Converter
from gateway.console import _data as console_data
from gateway.delivery import DeliveryError, Outbound, Outbox
from gateway.policy import KEPT_IN_OUTBOX, PolicyRecords
from gateway.store import Store
from gateway.store._cli import message_json
from tests.delivery.conftest import home, home_store, outbound, receive

from .conftest import HKID, consent

store = home_store  # the outbound path's own store (tests/delivery/conftest.py)
__all__ = ["home", "outbound"]  # fixtures, used by name

ALLOWED = "hl7v2/ref_i12_lax2_to_njmu2.hl7"  # domestic: allowed, queued for njmu2
HELD = "imaging/oru_r01_nsch_cta_zh.hl7"  # to Hong Kong, no consent yet: held


def test_a_queued_records_policy_outcome_names_its_outbox_row_not_a_copy(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    let_go: list[bytes] = []
    record = PolicyRecords.record

    def seen(self: PolicyRecords, message_id: Any, decision: Any, *rest: Any) -> Any:
        let_go.append(decision.bundle_json)
        return record(self, message_id, decision, *rest)

    monkeypatch.setattr(PolicyRecords, "record", seen)
    message = receive(store, converter, ALLOWED)
    [placed] = outbound.process(message).placed
    assert placed.outcome == "queued" and placed.outbox_id is not None
    stored = store.get(message)
    assert stored is not None
    [outcome] = [o for o in stored.outcomes if o.stage == "policy"]
    assert outcome.output is None  # not a second copy of what the outbox row keeps
    [ref] = [i for i in outcome.issues if i["code"] == KEPT_IN_OUTBOX]
    digest = re.search(r"sha256 ([0-9a-f]{64})", ref["message"])
    assert digest is not None and digest[1] == hashlib.sha256(let_go[0]).hexdigest()
    assert f"policy decision {placed.decision_id}" in ref["message"]
    # The row it names keeps the Bundle, and its first event names the same decision.
    assert outbound.outbox.parts(placed.outbox_id) != []
    first = outbound.outbox.events(placed.outbox_id)[0]
    assert f"policy decision {placed.decision_id}" in first.reason
    # Every reader of the message still reads it: CLI/API JSON, the console's detail.
    shown = message_json(stored)
    [policy] = [o for o in shown["outcomes"] if o["stage"] == "policy"]
    assert policy["output"] is None and KEPT_IN_OUTBOX in [i["code"] for i in policy["issues"]]
    detail = console_data.detail(store, message)
    assert detail is not None and outcome.id not in detail.outputs
    assert [d["id"] for d in detail.decisions] == [placed.decision_id]
    assert [d.record.id for d in detail.deliveries] == [placed.outbox_id]
    assert outbound.policy.get(placed.decision_id or 0).outcome == "allow"


def test_a_decision_without_an_outbox_row_keeps_its_bundle(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, ALLOWED)
    stored = store.get(message)
    assert stored is not None and stored.outcomes[-1].output is not None
    decision = outbound.policy.apply(message, stored.outcomes[-1].output, "LAX2", "NJMU2")
    assert decision.allowed
    out = store.get(message).outcomes[-1]  # type: ignore[union-attr]
    assert out.stage == "policy" and out.output == decision.bundle_json
    assert KEPT_IN_OUTBOX not in [i["code"] for i in out.issues]


def test_a_failed_release_of_a_held_row_keeps_no_decision(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = receive(store, converter, HELD)
    [placed] = outbound.process(message).placed
    assert placed.outcome == "held" and placed.outbox_id is not None
    outbound.policy.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ("second-opinion",), start="2026-01-01", end="2099-12-31"
        )
    )
    before = [(d.id, d.outcome) for d in outbound.policy.find(message_id=message)]
    outcomes = len(store.get(message).outcomes)  # type: ignore[union-attr]
    fill = Outbox.fill

    def fails(self: Outbox, *args: Any, **kwargs: Any) -> None:
        fill(self, *args, **kwargs)  # the row moved, then its transaction fails
        raise DeliveryError("delivery.conflict", "the row moved meanwhile")

    monkeypatch.setattr(Outbox, "fill", fails)
    assert outbound.recheck_held() == []
    # Neither the release's decision nor the row's move was kept.
    assert [(d.id, d.outcome) for d in outbound.policy.find(message_id=message)] == before
    assert len(store.get(message).outcomes) == outcomes  # type: ignore[union-attr]
    row = outbound.outbox.require(placed.outbox_id)
    assert (row.state, row.part_count) == ("held", 0)
    monkeypatch.setattr(Outbox, "fill", fill)
    [moved] = outbound.recheck_held()
    assert moved.id == placed.outbox_id and moved.state == "pending"
