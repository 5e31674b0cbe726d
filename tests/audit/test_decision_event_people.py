"""The policy decision's audit event names every individual of the record (a Bundle of
several patients: each by the policy's keyed pseudonyms, each found by a patient
search) and, for a consent-based transfer, the consents it rests on as entities of
their own that the ``consent`` search parameter finds; never an identifier or a name in
the clear."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from gateway import Settings, validation
from gateway.audit import (
    PSEUDONYM,
    AuditLog,
    ExportFilter,
    export_bundle,
    parse_query,
    search_events,
)
from gateway.policy import Policy, PolicyRecords, pseudonym
from gateway.signing import Signer
from gateway.store import Store
from tests.policy.conftest import HKID, KEY, NOW, bundles, consent

__all__ = ["bundles"]  # the policy's fixture: the demo referrals converted

RESIDENT = "urn:oid:2.16.156.10011.1.3"
MRN = "https://fhir.nsch.example.cn/sid/mrn"


def _two_patients(bundle: bytes) -> dict[str, Any]:
    """許嘉瑋's referral with a second individual in it: her mother 許陳美玲, whose data
    crosses with hers (each needs a consent of her own)."""
    out = orjson.loads(bundle)
    [patient] = [e for e in out["entry"] if e["resource"]["resourceType"] == "Patient"]
    mother = copy.deepcopy(patient)
    mother["fullUrl"] = "urn:uuid:6f1b4c3e-1d2a-4c55-9a51-6b0f3cf0a001"
    mother["resource"]["id"] = "6f1b4c3e-1d2a-4c55-9a51-6b0f3cf0a001"
    mother["resource"]["identifier"] = [
        {"system": MRN, "value": "0055501"},
        {"system": HKID, "value": "Y123456A"},
    ]
    mother["resource"]["name"] = [{"text": "許陳美玲", "family": "許", "given": ["陳美玲"]}]
    mother["request"]["ifNoneExist"] = f"identifier={MRN}|0055501"
    out["entry"].append(mother)
    return out


def _decision_events(store: Store) -> list[dict[str, Any]]:
    return [
        orjson.loads(e.canonical) for e in AuditLog(store).rows() if e.kind == "policy-decision"
    ]


def _patients(event: dict[str, Any]) -> list[str]:
    return [
        f"{e['what']['identifier']['system']}|{e['what']['identifier']['value']}"
        for e in event["entity"]
        if e["role"]["code"] == "1"
    ]


def _kinds(found: list[dict[str, Any]]) -> list[str]:
    return [e["subtype"][-1]["code"] for e in found]


def _found(store: Store, **params: str) -> list[dict[str, Any]]:
    page, _ = search_events(AuditLog(store), parse_query(list(params.items())))
    return [event for _, event in page]


def test_the_decision_event_names_every_individual_and_the_consents(
    settings: Settings, bundles: dict[str, bytes], store: Store
) -> None:
    records = PolicyRecords(store, Policy(settings, key=KEY))
    records.import_consent(consent((HKID, "K583726A"), "HKPMC", ident="consent-xu-2026"))
    records.import_consent(consent((HKID, "Y123456A"), "HKPMC", ident="consent-mother"))
    bundle = _two_patients(bundles["ref_i12_nsch_to_hkpmc"])
    decision = records.apply(None, bundle, "NSCH", "HKPMC", "referral", now=NOW)
    assert decision.allowed and sorted(decision.consents) == ["consent-mother", "consent-xu-2026"]
    [event] = _decision_events(store)
    wanted = [
        f"{PSEUDONYM}|{pseudonym(KEY, system, value)}"
        for system, value in (
            (MRN, "0098765"),
            (HKID, "K583726A"),
            (MRN, "0055501"),
            (HKID, "Y123456A"),
        )
    ]
    # Before: the first identifier's pseudonym of the first patient alone.
    assert _patients(event) == wanted
    consents = [
        e["what"]["reference"]
        for e in event["entity"]
        if e["what"].get("reference", "").startswith("Consent/")
    ]
    assert consents == ["Consent/consent-xu-2026", "Consent/consent-mother"]
    # An auditor finds it by either individual, and by the consent it rests on (with
    # the consent's own event: its import).
    assert _found(store, patient=wanted[3])[-1] == event
    assert _kinds(_found(store, patient=wanted[3])) == ["consent", "policy-decision"]
    assert _kinds(_found(store, patient=wanted[0])) == ["policy-decision"]
    assert _found(store, consent="consent-mother")[-1] == event
    assert _kinds(_found(store, consent="Consent/consent-xu-2026")) == [
        "consent",
        "policy-decision",
    ]
    assert _found(store, consent="consent-other") == []
    # A valid event of the gateway's profile, and nothing in the clear.
    issues = validation.validate_resource(event, all_issues=True)
    assert [i.line() for i in issues if i.severity in ("error", "fatal")] == []
    text = orjson.dumps(event).decode()
    for clear in ("K583726A", "Y123456A", "0098765", "0055501", "許陳美玲", "嘉瑋"):
        assert clear not in text


def test_a_decision_on_no_consent_names_none(
    settings: Settings, bundles: dict[str, bytes], store: Store
) -> None:
    """Domestic (no consent required): no Consent entity, the one individual's
    pseudonyms."""
    records = PolicyRecords(store, Policy(settings, key=KEY))
    decision = records.apply(
        None, bundles["ref_i12_lax2_to_njmu2"], "LAX2", "NJMU2", "referral", now=NOW
    )
    assert decision.allowed and decision.consents == []
    [event] = _decision_events(store)
    assert all(not e["what"].get("reference", "").startswith("Consent/") for e in event["entity"])
    assert len(_patients(event)) == len(decision.patients) >= 1


def test_an_export_by_any_individual_or_by_consent_holds_the_decision(
    settings: Settings, bundles: dict[str, bytes], store: Store, signer: Signer
) -> None:
    """`gateway audit export --patient` (any individual's pseudonym) and `--consent`."""
    records = PolicyRecords(store, Policy(settings, key=KEY))
    records.import_consent(consent((HKID, "K583726A"), "HKPMC", ident="consent-xu-2026"))
    records.import_consent(consent((HKID, "Y123456A"), "HKPMC", ident="consent-mother"))
    bundle = _two_patients(bundles["ref_i12_nsch_to_hkpmc"])
    assert records.apply(None, bundle, "NSCH", "HKPMC", "referral", now=NOW).allowed
    [event] = _decision_events(store)
    log = AuditLog(store)
    head = log.sign_head(signer)

    def exported(where: ExportFilter) -> list[str]:
        entries = export_bundle(log, where, head)["entry"][1:]
        return [e["resource"]["subtype"][-1]["code"] for e in entries]

    mother = pseudonym(KEY, MRN, "0055501")  # her second identifier's, a bare value
    # Before: the decision was found by the first patient's first pseudonym alone.
    assert exported(ExportFilter(patient=mother)) == ["policy-decision"]
    assert exported(ExportFilter(consent="consent-mother")) == ["consent", "policy-decision"]
    assert exported(ExportFilter(consent="Consent/consent-none")) == []
    assert exported(ExportFilter(patient=mother, consent="consent-xu-2026")) == ["policy-decision"]
    assert (
        event["id"] in orjson.dumps(export_bundle(log, ExportFilter(patient=mother), head)).decode()
    )
