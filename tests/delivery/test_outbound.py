"""The outbound path: a converted message in the store → routed → policy → report
variant → signed → queued; the message's state follows its outbox rows; a record the
policy holds waits for its consent; the same record is queued once."""

from __future__ import annotations

import dataclasses
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import respx

from gateway import Converter, Settings
from gateway.delivery import Deliverer, DeliveryConfig, Outbound, Outbox, unrouted
from gateway.errors import ConfigError
from gateway.policy import PolicyRecords
from gateway.processing import on_converted, process_message
from gateway.signing import make_demo_pki
from gateway.store import Store, utcnow
from tests.policy.conftest import HKID, consent

from .conftest import answer_checks, home_store, receive, response

NJMU2 = "https://fhir.njmu2.example.cn/fhir/"
HKPMC = "https://fhir.hkpmc.example.hk/fhir/R4/"
FAST = DeliveryConfig(backoff_base=0.01, backoff_cap=0.01, max_attempts=2)
store = home_store  # these tests' store is the home's (conftest), not a bare one per backend


def parts(outbox: Outbox, row: int) -> list[dict[str, Any]]:
    return outbox.parts(row)


def resources(outbox: Outbox, row: int, kind: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for part in parts(outbox, row)
        for e in part["entry"]
        if e["resource"]["resourceType"] == kind
    ]


def test_a_referral_is_routed_decided_and_queued_and_says_why(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    result = outbound.process(message)
    [placed] = result.placed
    assert (placed.partner, placed.outcome, result.state) == ("njmu2", "queued", "queued")
    row = outbound.outbox.require(placed.outbox_id or 0)
    assert (row.message_id, row.record, row.purpose, row.label) == (
        message,
        0,
        "referral",
        "LAX220260611101500003",
    )
    assert store.state_of(message) == "queued"
    stored = store.get(message)
    assert stored is not None
    route = next(o for o in stored.outcomes if o.stage == "route")
    codes = [i["code"] for i in route.issues]
    assert codes == ["delivery.routed", "delivery.queued"]
    assert (
        "referral-to-its-target: message type REF^I12 in [REF^I12, REF^I14]"
        in (route.issues[0]["message"])
    )
    # The policy decided it, with the message: a domestic referral, allowed.
    [decision] = outbound.policy.find(message_id=message)
    assert (decision.outcome, decision.recipient, placed.decision_id) == (
        "allow",
        "njmu2",
        decision.id,
    )
    # What is queued is the policy's Bundle: labelled with the legal basis.
    [request] = resources(outbound.outbox, row.id, "ServiceRequest")
    assert any("cross-border-legal-basis" in s["system"] for s in request["meta"]["security"])


def test_queued_once_however_often_processed(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    first = outbound.process(message).placed[0]
    again = outbound.process(message).placed[0]
    assert (again.outcome, again.outbox_id) == ("already", first.outbox_id)
    assert len(outbound.outbox.records()) == 1


def test_message_state_follows_its_rows_to_delivered_and_dead(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    good = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    bad = receive(store, converter, "hl7v2/orm_o01_lax2_ct.hl7")  # another patient? same: order
    outbound.process(good)
    outbound.process(bad)
    refused = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    with respx.mock(assert_all_mocked=True) as partner:
        answer_checks(partner)

        def answer(request: Any) -> Any:
            body = orjson.loads(request.content)
            kinds = {e["resource"]["resourceType"] for e in body["entry"]}
            if "ServiceRequest" in kinds and "Condition" not in kinds:  # the order
                return respx.MockResponse(400, json=refused)
            return respx.MockResponse(200, json=response(*["201"] * len(body["entry"])))

        partner.post(NJMU2).mock(side_effect=answer)
        with Deliverer(outbound.outbox, outbound.partners, FAST, rng=random.Random(1)) as worker:
            for _ in range(5):
                worker.run_once()
    assert store.state_of(good) == "delivered"
    assert store.state_of(bad) == "dead"
    [row] = outbound.outbox.for_message(bad)
    assert row.last_error == "delivery.partner-rejected"


def test_held_for_consent_then_released_queued_minimised_as_the_partner_prefers(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, "imaging/oru_r01_nsch_cta_zh.hl7")
    result = outbound.process(message)
    [placed] = result.placed
    assert (placed.partner, placed.outcome, placed.code) == ("hkpmc", "held", "policy.held")
    row = outbound.outbox.require(placed.outbox_id or 0)
    assert (row.state, row.part_count, row.last_error) == ("held", 0, "policy.held")
    assert store.state_of(message) == "held"
    assert outbound.recheck_held() == []  # no consent yet: still held
    records = PolicyRecords(store, outbound.policy.policy)
    records.import_consent(
        consent(
            (HKID, "K583726A"), "HKPMC", ("second-opinion",), start="2026-01-01", end="2099-12-31"
        )
    )
    [moved] = outbound.recheck_held()
    assert (moved.id, moved.state, moved.last_error) == (row.id, "pending", None)
    assert store.state_of(message) == "queued"
    assert [e.to_state for e in outbound.outbox.events(row.id)] == ["held", "pending"]
    sent = orjson.dumps(parts(outbound.outbox, row.id))
    assert b"K583726" not in sent  # the HKID left pseudonymised
    # The Hong Kong partner's variant: Hong Kong Traditional beside English.
    [report] = resources(outbound.outbox, row.id, "DiagnosticReport")
    assert report["meta"]["profile"] == [
        "https://fhir-gateway.example.org/StructureDefinition/bilingual-diagnosticreport"
    ]
    assert "report variant zh-Hant-HK+en" in outbound.outbox.events(row.id)[-1].reason


def test_a_refused_transfer_queues_nothing(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    # Lai'an → Hong Kong is agreed for second opinions only, not referrals.
    result = outbound.process(message, to=["HKPMC"])
    [placed] = result.placed
    assert (placed.outcome, placed.outbox_id, placed.code) == ("denied", None, "policy.denied")
    assert result.state == store.state_of(message) == "denied"
    assert outbound.outbox.records() == []


def test_an_unknown_partner_is_not_sent_and_said(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    result = outbound.process(message, to=["LAX2"])
    assert result.placed == [] and result.routings[0].skipped == [
        ("lax2", "no FHIR server configured (partners)")
    ]
    assert store.state_of(message) == "converted"


def test_signed_with_the_key_the_signing_rules_name(
    home: Settings, store: Store, converter: Converter, tmp_path: Path
) -> None:
    from gateway.signing import TrustStore, verify_bundle

    make_demo_pki(home.network, tmp_path / "keys", "EdDSA")
    signing = dataclasses.replace(
        home, signing_keys=tmp_path / "keys", signing_rules="LAX2/REF^I12=lax2"
    )
    outbound = Outbound(signing, store)
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    [placed] = outbound.process(message).placed
    [bundle] = parts(outbound.outbox, placed.outbox_id or 0)
    report = verify_bundle(bundle, TrustStore.load(tmp_path / "keys" / "ca"))
    assert report.ok and len(report.signatures) == 1
    assert "signed by" in outbound.outbox.events(placed.outbox_id or 0)[0].reason


def test_a_partner_that_takes_it_in_parts_gets_it_unsigned_not_failed(
    home: Settings, store: Store, converter: Converter, tmp_path: Path
) -> None:
    """A signature covers the whole Bundle: for a partner taking at most 8 entries a
    request the signed referral (its signature Provenance refers to every entry) could
    not be split and failed (config.partner-limit); it goes unsigned, and says so."""
    from gateway.partners import Partner

    make_demo_pki(home.network, tmp_path / "keys", "EdDSA")
    signing = dataclasses.replace(
        home, signing_keys=tmp_path / "keys", signing_rules="LAX2/REF^I12=lax2"
    )
    outbound = Outbound(signing, store, partners={"njmu2": Partner("njmu2", NJMU2, max_entries=8)})
    message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    [placed] = outbound.process(message).placed
    assert placed.outcome == "queued", placed
    sent = parts(outbound.outbox, placed.outbox_id or 0)
    assert len(sent) > 1 and all(len(p["entry"]) <= 8 for p in sent)
    assert not any(p.get("signature") for p in sent)
    said = outbound.outbox.events(placed.outbox_id or 0)[0].reason
    assert "not signed: njmu2 takes it in several requests" in said


def test_the_institution_must_be_of_the_network(home: Settings, store: Store) -> None:
    with pytest.raises(ConfigError) as caught:
        Outbound(dataclasses.replace(home, institution="NOPE"), store)
    assert caught.value.code == "config.institution"


def test_a_converted_message_reaches_the_outbound_path(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    seen: list[int] = []
    remove = on_converted(seen.append)
    try:
        message = receive(store, converter, "hl7v2/ref_i12_lax2_to_njmu2.hl7")
    finally:
        remove()
    assert seen == [message]
    # Not yet routed: the sweep finds it; routed: no more.
    assert unrouted(store) == [message]
    outbound.process(message)
    assert unrouted(store) == []
    # A reprocess (a mapping fix) makes it new again.
    process_message(store, converter, message)
    assert unrouted(store) == [message]
    # ... unless it is older than the service looks back.
    assert unrouted(store, since=utcnow() + timedelta(seconds=1)) == []
