"""A person's retry or replay is decided again today (tests/policy/
test_adversarial_withdrawal.py); when today's decision changes the record
(allow-with-changes), what crosses is the record minimised under today's rules, not the
parts stored when it was first queued: data today's minimisation removes never crosses
on an old decision's parts. The decision's audit event says which parts went."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter
from gateway.audit import AuditLog
from gateway.delivery import Deliverer, DeliveryConfig, DeliveryError, Outbound
from gateway.policy import PolicyRecords
from gateway.store import Store
from tests.delivery import conftest as delivery
from tests.delivery.conftest import answer_checks, receive, response
from tests.policy.conftest import HKID, consent

HKPMC = "https://fhir.hkpmc.example.hk/fhir/R4/"
FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.01, max_attempts=5)
NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
MRN_VALUE = b"0098765"  # 許嘉瑋's record number at Nansha (examples/hl7v2/ref_i12_nsch_to_hkpmc)
home, store, outbound = delivery.home, delivery.home_store, delivery.outbound


def _queued(store: Store, converter: Converter, outbound: Outbound) -> int:
    """許嘉瑋's referral to Hong Kong, queued on her consent; its outbox row."""
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "held"
    PolicyRecords(store, outbound.policy.policy).import_consent(
        consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")
    )
    [moved] = outbound.recheck_held()
    assert moved.state == "pending"
    return moved.id


def _deliver(outbound: Outbound, status: int = 200) -> list[bytes]:
    sent: list[bytes] = []
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        answer_checks(partner)  # the overwrite check finds nothing held

        def answer(request: Any) -> Any:
            sent.append(request.content)
            if status != 200:
                outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
                return respx.MockResponse(status, json=outcome)
            body = orjson.loads(request.content)
            return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

        partner.post(HKPMC).mock(side_effect=answer)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            for _ in range(3):
                worker.run_once()
    return sent


def _stricter(outbound: Outbound, monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Today's cross-border minimisation is stricter than when the row was queued."""
    data = outbound.policy.policy.data
    monkeypatch.setattr(
        data,
        "profiles",
        [dataclasses.replace(p, **changes) if p.id == "cross-border" else p for p in data.profiles],
    )
    outbound.policy.policy.invalidate()


def _patient(sent: list[bytes]) -> dict[str, Any]:
    """The Patient of the parts the partner got."""
    return next(
        e["resource"]
        for part in sent
        for e in orjson.loads(part)["entry"]
        if e["resource"]["resourceType"] == "Patient"
    )


def _last_decision_event(store: Store) -> dict[str, Any]:
    log = AuditLog(store)
    events = [orjson.loads(e.canonical) for e in log.rows()]
    return [e for e in events if e["subtype"][-1]["code"] == "policy-decision"][-1]


def _details(event: dict[str, Any]) -> dict[str, str]:
    return {
        d["type"]: d["valueString"] for e in event.get("entity") or [] for d in e.get("detail", [])
    }


def test_a_replay_sends_the_record_minimised_under_todays_rules(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = _queued(store, converter, outbound)
    first = _deliver(outbound)
    assert MRN_VALUE in b"".join(first)  # the rules then: the hospital's record number crossed
    # Today the record number is pseudonymised too.
    pseudonymise = outbound.policy.policy.data.profiles[0].pseudonymise | {NSCH_MRN}
    _stricter(outbound, monkeypatch, pseudonymise=pseudonymise)
    replayed = outbound.replay(row, "the partner restored a backup")
    again = _deliver(outbound)
    assert again and MRN_VALUE not in b"".join(
        again
    )  # before: the stored parts, record number and all
    systems = [i["system"] for i in _patient(again)["identifier"]]
    assert NSCH_MRN not in systems
    assert outbound.outbox.require(replayed.id).state == "delivered"
    event = _last_decision_event(store)
    assert event["outcomeDesc"] == "allow-with-changes"
    assert _details(event)["resend"] == "replay"
    assert _details(event)["resend-parts"] == "rebuilt"
    [basis] = event["extension"]
    assert basis["extension"][0]["valueCoding"]["code"]  # the basis of the resend, named


def test_a_retry_of_a_dead_row_sends_the_record_minimised_under_todays_rules(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dead (the partner refused it); today addresses are removed whole: the same
    profile id, only its address rule changed (a memo of the old pass 1 must not
    answer for it)."""
    row = _queued(store, converter, outbound)
    refused = _deliver(outbound, status=400)
    assert outbound.outbox.require(row).state == "dead"
    assert _patient(refused)["address"][0]["city"] == "广州市"
    _stricter(outbound, monkeypatch, address="remove")
    retried = outbound.retry(row, "the partner fixed its validator")
    assert (retried.state, retried.part) == ("pending", 0)
    again = _deliver(outbound)
    assert "address" not in _patient(again)  # before: the stored parts, city and all
    assert _details(_last_decision_event(store))["resend-parts"] == "rebuilt"


def test_a_resend_that_cannot_be_rebuilt_is_not_sent_on_the_stored_parts(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    row = _queued(store, converter, outbound)
    assert _deliver(outbound)
    pseudonymise = outbound.policy.policy.data.profiles[0].pseudonymise | {NSCH_MRN}
    _stricter(outbound, monkeypatch, pseudonymise=pseudonymise)
    monkeypatch.delitem(outbound.partners, "hkpmc")  # no longer configured
    with pytest.raises(DeliveryError) as refused:
        outbound.replay(row, "the partner restored a backup")
    assert refused.value.code == "delivery.not-rebuilt"
    assert [r.id for r in outbound.outbox.records(limit=100)] == [row]  # nothing queued
