"""Audited or not sent: a cross-border transfer whose policy decision the audit log
cannot record is not queued (fail closed): its outbox row is held
(``policy.audit-unavailable``) and decided again, and sent, once the log is writable.
A domestic transfer goes on as before (the failure logged, ``audit.write-failed``)."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter
from gateway.audit import AuditLog
from gateway.delivery import Deliverer, DeliveryConfig, Outbound
from gateway.policy import PolicyError, PolicyRecords
from gateway.store import Store
from tests.delivery import conftest as delivery
from tests.delivery.conftest import answer_checks, receive, response
from tests.policy.conftest import HKID, consent

FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.01, max_attempts=5)
home, store, outbound = delivery.home, delivery.home_store, delivery.outbound


def _broken_audit(outbound: Outbound, monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit log refuses every append (a full disk, a locked or damaged table)."""
    assert outbound.policy.audit is not None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no space left on device")

    monkeypatch.setattr(outbound.policy.audit, "append_rows", refuse)


def _deliver(outbound: Outbound) -> list[str]:
    """Run the worker against partners that take everything; the URLs sent to."""
    sent: list[str] = []
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partners:
        answer_checks(partners)  # the overwrite check finds nothing held

        def answer(request: Any) -> Any:
            sent.append(str(request.url))
            body = orjson.loads(request.content)
            return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

        partners.route().mock(side_effect=answer)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            for _ in range(3):
                worker.run_once()
    return sent


def _decisions(store: Store) -> int:
    return sum(1 for e in AuditLog(store).rows() if e.kind == "policy-decision")


def test_a_cross_border_transfer_is_held_until_its_decision_is_audited(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 許嘉瑋 consented to her referral to Hong Kong: the policy allows it (with changes).
    PolicyRecords(store, outbound.policy.policy).import_consent(
        consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")
    )
    _broken_audit(outbound, monkeypatch)
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    # Before: queued and sent with no decision in the audit log.
    assert (placed.outcome, placed.code) == ("held", "policy.audit-unavailable")
    row = outbound.outbox.require(placed.outbox_id or 0)
    assert (row.state, row.last_error, row.part_count) == ("held", "policy.audit-unavailable", 0)
    assert store.state_of(message) == "held"
    assert outbound.policy.find(message) == []  # no decision kept without its event
    assert _decisions(store) == 0
    assert _deliver(outbound) == []
    assert "audit.write-failed" in caplog.text
    # Still unwritable: decided again, still held.
    assert outbound.recheck_held() == []
    assert outbound.outbox.require(row.id).state == "held"
    # The log writable again: decided, audited, queued and sent.
    monkeypatch.undo()
    [moved] = outbound.recheck_held()
    assert (moved.id, moved.state) == (row.id, "pending")
    assert _decisions(store) == 1
    [decision] = outbound.policy.find(message)
    assert decision.outcome == "allow-with-changes"
    assert _deliver(outbound) and outbound.outbox.require(row.id).state == "delivered"


def test_a_domestic_transfer_goes_on_when_the_audit_fails(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lai'an to Nanjing, both on the mainland: today's behaviour (the audit never
    fails a domestic record)."""
    _broken_audit(outbound, monkeypatch)
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "queued"
    assert outbound.outbox.require(placed.outbox_id or 0).state == "pending"
    assert _decisions(store) == 0
    [decision] = outbound.policy.find(message)
    assert decision.allowed


def test_a_retry_across_the_boundary_is_refused_while_the_audit_fails(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead row's retry is a new decision: not audited, not queued (the row stays
    dead, the person told why); audited again, the same retry goes."""
    PolicyRecords(store, outbound.policy.policy).import_consent(
        consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")
    )
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "queued"
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partners:
        answer_checks(partners)  # the overwrite check finds nothing held
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
        partners.route().mock(return_value=respx.MockResponse(400, json=outcome))
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()
    row = placed.outbox_id or 0
    assert outbound.outbox.require(row).state == "dead"
    _broken_audit(outbound, monkeypatch)
    with pytest.raises(PolicyError) as refused:
        outbound.retry(row, "the partner fixed its validator")
    assert refused.value.code == "policy.audit-unavailable"
    assert outbound.outbox.require(row).state == "dead"
    monkeypatch.undo()
    assert outbound.retry(row, "the partner fixed its validator").state == "pending"
