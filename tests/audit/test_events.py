"""AuditEvents: every kind conforms to the gateway's BALP-based profiles (the gateway's
own validator checks them), each profile rule bites, and referrals and reports run
through the pipeline give the expected sequence of events, in a log that verifies."""

from __future__ import annotations

import copy
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, validation
from gateway.audit import AuditLog, Subject, events, record_events, verify_log
from gateway.audit._events import DISCLOSURE, KIND_SYSTEM, PROFILE, keys_of
from gateway.audit._hooks import decision_event, delivery_event
from gateway.policy import Decision

REPO = Path(__file__).resolve().parents[2]
S = Subject("Patient/3f0c9a43-wang-wei", ("Bundle/0b6f",), (("control-id", "LAX220260611"),))
AGREEMENT = "粤港澳大湾区个人信息跨境流动标准合同 NSCH-HKPMC-2026"


def every_kind() -> dict[str, dict[str, Any]]:
    return {
        "received": events.received("NSCH", S, peer="10.8.0.21:40112"),
        "converted": events.converted(S),
        "validation-failed": events.validation_failed(S, "mapping.no-identity"),
        "policy-decision": events.policy_decision(
            "NSCH",
            "HKPMC",
            "hold",
            S,
            basis="gba-standard-contract",
            agreement=AGREEMENT,
            purpose="referral",
        ),
        "signed": events.signed(S, "南沙中心医院", "author"),
        "delivery": events.delivery(
            "HKPMC",
            S,
            url="https://fhir.hkpmc.example.hk/fhir",
            outcome="success",
            basis="gba-standard-contract",
            agreement=AGREEMENT,
            purpose="referral",
            status=200,
        ),
        "inbound": events.inbound_receipt("HKPMC", S, peer="203.0.113.7"),
        "signature-verified": events.signature_verified(
            S, "徐静 XU Jing", False, code="signing.revoked"
        ),
        "consent": events.consent_changed(
            S.patient or "", "consent-1", "active", operator="ops-陈"
        ),
        "operator": events.operator_action("reprocess", "ops-陈", S),
        "api-read": events.api_read("referral-portal", "auditor-李", S, network="10.8.0.9"),
        "audit-export": events.event("audit-export", subject=Subject(S.patient)),
    }


def errors(resource: dict[str, Any]) -> list[str]:
    return [
        i.line()
        for i in validation.validate_resource(resource, all_issues=True)
        if i.severity in ("error", "fatal")
    ]


@pytest.mark.parametrize("kind", list(every_kind()))
def test_every_kind_conforms_to_its_profile(kind: str) -> None:
    event = every_kind()[kind]
    assert keys_of(event)[0] == kind
    expected = DISCLOSURE if kind in ("delivery", "inbound") else PROFILE
    assert event["meta"]["profile"] == [expected]
    assert errors(event) == []


def _without_agent(event: dict[str, Any], code: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["agent"] = [
        a
        for a in changed["agent"]
        if code not in [c["code"] for c in (a.get("type") or {}).get("coding", [])]
    ]
    return changed


def _mutations() -> list[tuple[str, dict[str, Any]]]:
    kinds = every_kind()
    out = []
    e = copy.deepcopy(kinds["converted"])
    e["source"]["observer"]["identifier"]["value"] = "another-gateway"
    out.append(("gw-ae-1", e))
    e = copy.deepcopy(kinds["converted"])
    e["subtype"] = [s for s in e["subtype"] if s["system"] != KIND_SYSTEM]
    out.append(("gw-ae-2", e))
    e = copy.deepcopy(kinds["delivery"])
    e["action"] = "C"
    out.append(("gw-ae-3", e))
    e = copy.deepcopy(kinds["delivery"])
    del e["extension"]
    out.append(("gw-ae-4", e))
    out.append(("gw-aed-1", _without_agent(kinds["delivery"], "110153")))
    e = copy.deepcopy(kinds["inbound"])
    del e["agent"][0]["network"]
    out.append(("gw-aed-2", e))
    e = copy.deepcopy(kinds["delivery"])
    e["entity"] = [x for x in e["entity"] if x["role"]["code"] != "1"]
    out.append(("gw-aed-3", e))
    e = copy.deepcopy(kinds["delivery"])
    e["type"]["code"] = "110100"
    out.append(("gw-aed-4", e))
    e = copy.deepcopy(kinds["delivery"])
    e["entity"][0]["name"] = "王伟"
    out.append(("AuditEvent.entity[0].name", e))
    return out


@pytest.mark.parametrize(("rule", "event"), _mutations(), ids=[m[0] for m in _mutations()])
def test_each_rule_bites(rule: str, event: dict[str, Any]) -> None:
    found = errors(event)
    assert any(rule in line for line in found), found


def test_events_carry_no_patient_data() -> None:
    text = orjson.dumps(list(every_kind().values())).decode()
    for name in ("王伟", "WANG", "陈大文"):
        assert name not in text
    assert all("text" not in e for e in every_kind().values())


def test_referrals_and_reports_through_the_pipeline(log: AuditLog) -> None:
    converter = Converter()
    inputs = [
        REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7",
        REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7",
        REPO / "examples" / "hl7v2" / "batch_mixed.hl7",
        *sorted((REPO / "examples" / "imaging").glob("*.hl7"))[:1],
    ]
    records = [r for path in inputs for r in converter.convert_path(path)]
    assert any(r.ok for r in records) and any(not r.ok for r in records)
    appended = []
    for n, record in enumerate(records, 1):
        made = record_events(record, channel="mllp", peer="10.8.0.21:40112", message_id=n)
        kinds = [keys_of(e)[0] for e in made]
        subject = made[0]["entity"]
        if record.ok:
            assert kinds == ["received", "converted"]
            assert [e["outcome"] for e in made] == ["0", "0"]
            patient = subject[0]
            assert patient["role"]["code"] == "1"
            bundle = record.bundle or {}
            patient_id = next(
                e["resource"]["id"]
                for e in bundle["entry"]
                if e["resource"]["resourceType"] == "Patient"
            )
            assert patient["what"] == {"reference": f"Patient/{patient_id}"}
        else:
            assert kinds == ["received", "validation-failed"]
            assert made[1]["outcome"] == "8"
            assert made[1]["outcomeDesc"] == record.errors[0].code
        sender = made[0]["agent"][1]
        assert sender["who"]["identifier"]["value"] == (record.sender or "unknown")
        assert sender["network"]["address"] == "10.8.0.21:40112"
        for event in made:
            assert errors(event) == []
        appended += log.record_many(made)
        if record.ok and record.sender == "NSCH":
            decision = Decision(
                "allow",
                "NSCH",
                "HKPMC",
                "referral",
                datetime(2026, 6, 11, 2, 0),
                [],
                basis="gba-standard-contract",
                agreement=AGREEMENT,
                patients=["k7Jx2"],
            )
            subj = Subject(
                subject[0]["what"]["reference"], (f"Bundle/{(record.bundle or {})['id']}",)
            )
            for extra in (
                decision_event(decision, subj),
                delivery_event(
                    "HKPMC",
                    subj,
                    url="https://fhir.hkpmc.example.hk/fhir",
                    delivered=False,
                    status=503,
                    attempt=1,
                    basis="gba-standard-contract",
                    agreement=AGREEMENT,
                ),
                delivery_event(
                    "HKPMC",
                    subj,
                    url="https://fhir.hkpmc.example.hk/fhir",
                    delivered=True,
                    status=200,
                    attempt=2,
                    basis="gba-standard-contract",
                    agreement=AGREEMENT,
                ),
            ):
                assert errors(extra) == []
                appended.append(log.record(extra))
    assert [a.index for a in appended] == list(range(len(appended)))
    kinds_logged = [e.kind for e in log.rows()]
    assert kinds_logged.count("delivery") == 2 and "policy-decision" in kinds_logged
    assert verify_log(log).ok
