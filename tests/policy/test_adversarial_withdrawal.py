"""Adversarial: a record queued on a consent that is withdrawn before it is sent (the
partner was down, the row waits for a retry) must not cross on the withdrawn consent;
a row held by the policy and released by an operator after its basis lapsed is decided
again on the day of release."""

from __future__ import annotations

import dataclasses
import random
from datetime import date
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter
from gateway.delivery import Deliverer, DeliveryConfig, DeliveryError, Outbound
from gateway.policy import PolicyRecords
from gateway.store import Store
from tests.delivery import conftest as delivery
from tests.delivery.conftest import answer_checks, receive, response
from tests.policy.conftest import HKID, consent

HKPMC = "https://fhir.hkpmc.example.hk/fhir/R4/"
FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.01, max_attempts=5)
# The outbound path's fixtures (tests/delivery/conftest.py): its store is the home's.
home, store, outbound = delivery.home, delivery.home_store, delivery.outbound


def _queued_on_consent(store: Store, converter: Converter, outbound: Outbound) -> tuple[int, Any]:
    """A referral to Hong Kong, held, then queued on the patient's consent."""
    message = receive(store, converter, "hl7v2/ref_i12_nsch_to_hkpmc.hl7")
    [placed] = outbound.process(message).placed
    assert (placed.partner, placed.outcome) == ("hkpmc", "held")
    records = PolicyRecords(store, outbound.policy.policy)
    given, _ = records.import_consent(
        consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31")
    )
    [moved] = outbound.recheck_held()
    assert moved.state == "pending"
    return message, (records, given, moved)


def test_a_row_queued_before_a_withdrawal_is_not_sent_after_it(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message, (records, given, row) = _queued_on_consent(store, converter, outbound)
    records.withdraw(given.id, operator="dpo")
    sent = _deliver(outbound)
    assert sent == []  # before: the referral crossed on the withdrawn consent
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("held", "policy.held")
    assert store.state_of(message) == "held"
    assert outbound.recheck_held() == []  # decided again: still no consent in force
    # A new consent: decided again and queued (the row filled again, once).
    records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ident="consent-2", start="2026-01-01", end="2099-12-31"
        )
    )
    [again] = outbound.recheck_held()
    assert (again.id, again.state) == (row.id, "pending")


def test_a_withdrawal_leaves_other_patients_and_partners_rows_alone(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    domestic = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    [other] = outbound.process(domestic).placed
    _, (records, given, row) = _queued_on_consent(store, converter, outbound)
    other_consent, _ = records.import_consent(
        consent((HKID, "K583726A"), "NSCH", ident="consent-nsch")
    )
    records.withdraw(other_consent.id)  # another recipient: the HKPMC row stays queued
    assert outbound.outbox.require(row.id).state == "pending"
    records.withdraw(given.id)
    assert outbound.outbox.require(other.outbox_id or 0).state == "pending"


def test_an_operator_release_after_the_agreement_lapsed_is_refused(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held (no consent); the consent arrives only after the agreement expired: the
    release decides on the day of release, and the row dies, not sent."""
    message = receive(store, converter, "imaging/oru_r01_nsch_cta_zh.hl7")
    [placed] = outbound.process(message).placed
    records = PolicyRecords(store, outbound.policy.policy)
    records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ("second-opinion",), start="2026-01-01", end="2099-12-31"
        )
    )
    lapsed = [a for a in outbound.policy.policy.data.agreements if a.id == "GBA-SC-2024-NSCH-HKPMC"]
    data = outbound.policy.policy.data
    monkeypatch.setattr(
        data,
        "agreements",
        [
            dataclasses.replace(a, valid_to=date(2026, 1, 1)) if a in lapsed else a
            for a in data.agreements
        ],
    )
    outbound.policy.policy.invalidate()
    outbound.release(placed.outbox_id or 0, "operator")
    row = outbound.outbox.require(placed.outbox_id or 0)
    assert (row.state, row.last_error) == ("dead", "policy.denied")


def _deliver(outbound: Outbound) -> list[bytes]:
    """Run the worker against a Hong Kong partner that takes everything; what it got."""
    sent: list[bytes] = []
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        answer_checks(partner)

        def answer(request: Any) -> Any:
            sent.append(request.content)
            body = orjson.loads(request.content)
            return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

        partner.post(HKPMC).mock(side_effect=answer)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            for _ in range(3):
                worker.run_once()
    return sent


def test_a_replay_after_the_withdrawal_is_not_sent(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    _, (records, given, row) = _queued_on_consent(store, converter, outbound)
    assert _deliver(outbound) and outbound.outbox.require(row.id).state == "delivered"
    records.withdraw(given.id)
    with pytest.raises(DeliveryError) as refused:  # before: queued on the old decision
        outbound.replay(row.id, "the partner asks again")
    assert refused.value.code == "delivery.not-replayable"
    assert "the policy, deciding again, holds it" in refused.value.issue.message
    assert _deliver(outbound) == []
    assert [r.id for r in outbound.outbox.records(limit=100)] == [row.id]  # no new row
    assert outbound.outbox.require(row.id).state == "delivered"


def _lapse(outbound: Outbound, monkeypatch: pytest.MonkeyPatch, agreement: str) -> None:
    """The cross-border agreement ended on 2026-01-01 (the policy reads it again)."""
    data = outbound.policy.policy.data
    monkeypatch.setattr(
        data,
        "agreements",
        [
            dataclasses.replace(a, valid_to=date(2026, 1, 1)) if a.id == agreement else a
            for a in data.agreements
        ],
    )
    outbound.policy.policy.invalidate()


def test_a_retry_of_a_dead_row_after_the_agreement_lapsed_is_refused(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued on a consent and the agreement; the partner refused it (dead); the
    agreement ends; a person's retry is decided again and refused: the row stays dead,
    nothing crosses. With the agreement back in force the same retry goes."""
    _, (_, _, row) = _queued_on_consent(store, converter, outbound)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as partner:
        answer_checks(partner)
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
        partner.post(HKPMC).mock(return_value=respx.MockResponse(400, json=outcome))
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            worker.run_once()
    dead = outbound.outbox.require(row.id)
    assert (dead.state, dead.last_error) == ("dead", "delivery.partner-rejected")
    _lapse(outbound, monkeypatch, "GBA-SC-2024-NSCH-HKPMC")
    with pytest.raises(DeliveryError) as refused:  # before: queued on the old decision
        outbound.retry(row.id, "the partner fixed its validator")
    assert refused.value.code == "delivery.not-retryable"
    assert "the policy, deciding again, refuses it" in refused.value.issue.message
    assert _deliver(outbound) == []
    after = outbound.outbox.require(row.id)
    assert (after.state, after.last_error) == ("dead", "delivery.partner-rejected")
    # The agreement in force again: the same retry is decided again, allowed and sent.
    monkeypatch.undo()
    outbound.policy.policy.invalidate()
    retried = outbound.retry(row.id, "the partner fixed its validator")
    assert retried.state == "pending"
    assert _deliver(outbound)  # its parts
    assert outbound.outbox.require(row.id).state == "delivered"


def _recorded_apart(body: bytes) -> tuple[list[Any], list[str]]:
    """A sent Bundle's entries without the transmit Provenance's ``recorded``, and those
    times."""
    entries = orjson.loads(body)["entry"]
    times = []
    for entry in entries:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Provenance" and "recorded" in resource:
            times.append(resource.pop("recorded"))
    return entries, times


def test_a_replay_on_a_basis_in_force_is_decided_again_and_sent(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message, (_, _, row) = _queued_on_consent(store, converter, outbound)
    first = _deliver(outbound)
    assert first and outbound.outbox.require(row.id).state == "delivered"
    before = len(outbound.policy.find(message))
    replayed = outbound.replay(row.id, "the partner restored a backup")
    assert (replayed.replay_of, replayed.state) == (row.id, "pending")
    # Rebuilt under today's minimisation (allow-with-changes), the same rules as then:
    # the same parts, sent again, but for the transfer Provenance's ``recorded``: the
    # replay is a transfer decided anew, recorded at its own time (the same second or later).
    again = _deliver(outbound)
    assert [_recorded_apart(b)[0] for b in again] == [_recorded_apart(b)[0] for b in first]
    times = [
        (_recorded_apart(a)[1], _recorded_apart(b)[1]) for a, b in zip(first, again, strict=True)
    ]
    assert all(then <= now for then, now in times) and any(then for then, _ in times)
    assert outbound.outbox.require(replayed.id).state == "delivered"
    # The new decision is kept (current) and named by the replay's transition.
    [latest, *older] = outbound.policy.find(message)
    assert len(older) == before and latest.outcome == "allow-with-changes"
    [created] = [e.reason for e in outbound.outbox.events(replayed.id) if e.from_state is None]
    assert created == (
        f"replay of {row.id}: the partner restored a backup "
        f"({latest.outcome}: policy decision {latest.id}; parts rebuilt under today's "
        "minimisation)"
    )
