"""No conditional update overwrites another patient's record at the partner
(docs/delivery.md, "No overwrite of another patient's record"), against the real
partner server, on SQLite and PostgreSQL.

Studies, orders and reports are written by ``PUT Type?identifier=system|value``: a
Study UID or order number the partner already holds for ANOTHER patient would have
that patient's resource replaced, subject included. 陳大文 is the first patient, 李小明
the second, whose study carries 陳大文's Study UID (a PACS error) or whose order
carries 陳大文's order number."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.cli import main
from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.conftest import REPO
from tests.delivery.conftest import bundle as referral
from tests.partner.conftest import PartnerServer

FAST = DeliveryConfig(backoff_base=0.05, backoff_cap=0.2, max_attempts=10, read_timeout=30)
STUDY = REPO / "examples" / "imaging" / "bundles" / "lax2_ct_head.json"  # 王伟's study
STUDY_UID = "urn:dicom:uid|urn:oid:2.16.156.10011.99.1.4.3.20260610.1"
MRN = "https://fhir.lax2.example.cn/sid/mrn"
CODE = "delivery.identifier-other-patient"
# 王伟 → 陳大文 (A) or 李小明 (B): identifiers and names; the Study UID stays.
A = {"0012345": "A0000001", "王伟": "陳大文", '"王"': '"陳"', '"伟"': '"大文"', "WEI": "TAIMAN"}
B = {"0012345": "B0000002", "王伟": "李小明", '"王"': '"李"', '"伟"': '"小明"', "WANG": "LI"}
# Nothing of either patient, nor the identifier values, may be in a reason.
SECRETS = ("A0000001", "B0000002", "陳", "李", "2.16.156.10011.99.1.4.3.20260610.1", "ORD-1")


def _study(swap: dict[str, str], description: str | None = None) -> dict[str, Any]:
    text = STUDY.read_text(encoding="utf-8")
    for old, new in swap.items():
        text = text.replace(old, new)
    found: dict[str, Any] = orjson.loads(text)
    if description is not None:
        for entry in found["entry"]:
            if entry["resource"]["resourceType"] == "ImagingStudy":
                entry["resource"]["description"] = description
    found["identifier"]["value"] += f"-{swap.get('0012345')}-{description}"  # its own dedup key
    return found


def _deliver(outbox: Outbox, target: Partner, rows: list[int]) -> None:
    with Deliverer(outbox, {target.key: target}, FAST, rng=random.Random(3)) as deliverer:
        for _ in range(60):
            deliverer.run_once()
            if all(outbox.require(r).state in ("delivered", "held", "dead") for r in rows):
                return


def _hold_reason(outbox: Outbox, row: int) -> str:
    [reason] = [e.reason for e in outbox.events(row) if e.to_state == "held"]
    assert not [s for s in SECRETS if s in reason], reason
    return reason


def _patient_name(partner: PartnerServer, resource: dict[str, Any]) -> str:
    [patient] = partner.search(f"Patient?_id={resource['subject']['reference'].split('/')[-1]}")
    return str(patient["name"][0]["text"])


def _studies(partner: PartnerServer) -> list[dict[str, Any]]:
    return partner.search(f"ImagingStudy?identifier={STUDY_UID}")


# -- (a) the local guard -----------------------------------------------------------------
def test_a_study_reusing_a_delivered_study_uid_is_held_locally(
    partner: PartnerServer, store: Store
) -> None:
    """Without asking the partner (its check off), the outbox knows 陳大文's study went
    there under that Study UID: 李小明's is held, 陳大文's study is unchanged."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    outbox = Outbox(store)
    first = outbox.enqueue(target, _study(A))[0]
    _deliver(outbox, target, [first])
    assert outbox.require(first).state == "delivered"
    [before] = _studies(partner)
    second = outbox.enqueue(target, _study(B))[0]
    _deliver(outbox, target, [second])
    row = outbox.require(second)
    assert (row.state, row.last_error) == ("held", CODE)
    reason = _hold_reason(outbox, second)
    assert "ImagingStudy.identifier (system urn:dicom:uid)" in reason, reason
    assert "this gateway queued or delivered to this partner for another patient" in reason
    assert f"gateway outbox release {second}" in reason
    [after] = _studies(partner)
    assert after == before and _patient_name(partner, after) == "陳大文"
    # A release checks again: still held, still 陳大文's.
    outbox.release(second, "checked")
    _deliver(outbox, target, [second])
    assert outbox.require(second).state == "held"
    assert _studies(partner) == [before]


def test_a_study_queued_after_one_not_yet_delivered_is_held(
    partner: PartnerServer, store: Store
) -> None:
    """Queued, not delivered yet, counts too: the earlier row will write it first."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    outbox = Outbox(store)
    rows = [outbox.enqueue(target, _study(swap))[0] for swap in (A, B)]
    _deliver(outbox, target, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered", "held"]
    [study] = _studies(partner)
    assert _patient_name(partner, study) == "陳大文"


def test_an_order_number_reused_for_another_patient_is_held_locally(
    partner: PartnerServer, store: Store
) -> None:
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    outbox = Outbox(store)
    first = outbox.enqueue(target, referral("A0000001", "ORD-1", name="陳大文"))[0]
    second = outbox.enqueue(target, referral("B0000002", "ORD-1", name="李小明"))[0]
    _deliver(outbox, target, [first, second])
    assert outbox.require(first).state == "delivered"
    assert (outbox.require(second).state, outbox.require(second).last_error) == ("held", CODE)
    assert "ServiceRequest.identifier" in _hold_reason(outbox, second)
    [order] = partner.search(
        "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/accession|ORD-1"
    )
    assert _patient_name(partner, order) == "陳大文"


def test_an_observation_reused_for_another_patient_is_held_locally(
    partner: PartnerServer, store: Store
) -> None:
    """A type the links do not keep (Observation): its identifiers are kept for the
    guard (outbox_links role ``writes``)."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    outbox = Outbox(store)
    rows = [
        outbox.enqueue(target, _observation(mrn, name))[0]
        for mrn, name in (("A0000001", "陳大文"), ("B0000002", "李小明"))
    ]
    _deliver(outbox, target, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered", "held"]
    assert "Observation.identifier (system urn:example:result)" in _hold_reason(outbox, rows[1])
    [result] = partner.search("Observation?identifier=urn:example:result|R-1")
    assert _patient_name(partner, result) == "陳大文"


def _observation(mrn: str, name: str) -> dict[str, Any]:
    found = referral(mrn, f"unused-{mrn}", name=name)
    found["entry"][1] = {
        "fullUrl": "urn:uuid:3f1f0a52-7a4b-4d6e-9d0e-000000000001",
        "resource": {
            "resourceType": "Observation",
            "identifier": [{"system": "urn:example:result", "value": "R-1"}],
            "status": "final",
            "code": {"text": "血红蛋白"},
            "subject": {"reference": found["entry"][0]["fullUrl"]},
        },
        "request": {"method": "PUT", "url": "Observation?identifier=urn:example:result|R-1"},
    }
    return found


# -- (b) the partner check ---------------------------------------------------------------
@pytest.mark.parametrize("known", [False, True], ids=["patient-absent", "patient-present"])
def test_a_study_another_writer_left_at_the_partner_is_held(
    partner: PartnerServer, store: Store, known: bool
) -> None:
    """陳大文's study was written at the partner by someone else (the gateway's outbox
    knows nothing of it): 李小明's study with its Study UID is held, whether or not the
    partner holds 李小明 yet, and the partner's study is unchanged."""
    partner.reset()
    assert partner.post(_study(A)).status_code == 200
    if known:
        patient = next(e for e in _study(B)["entry"] if e["resource"]["resourceType"] == "Patient")
        assert partner.post(_transaction(patient)).status_code == 200
    [before] = _studies(partner)
    target = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    row_id = outbox.enqueue(target, _study(B))[0]
    _deliver(outbox, target, [row_id])
    row = outbox.require(row_id)
    assert (row.state, row.last_error) == ("held", CODE)
    reason = _hold_reason(outbox, row_id)
    assert (
        "ImagingStudy.identifier (system urn:dicom:uid) names a ImagingStudy at the partner"
        in reason
    )
    assert "for another patient" in reason
    assert _studies(partner) == [before] and _patient_name(partner, before) == "陳大文"
    # Nothing of the record was written: not even 李小明's Patient when it was absent.
    assert len(partner.search(f"Patient?identifier={MRN}|B0000002")) == int(known)


def test_an_order_another_writer_left_at_the_partner_is_held(
    partner: PartnerServer, store: Store
) -> None:
    partner.reset()
    assert partner.post(referral("A0000001", "ORD-1", name="陳大文")).status_code == 200
    [before] = partner.search(
        "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/accession|ORD-1"
    )
    target = Partner("partner", partner.base)
    outbox = Outbox(store)
    row_id = outbox.enqueue(target, referral("B0000002", "ORD-1", name="李小明"))[0]
    _deliver(outbox, target, [row_id])
    assert (outbox.require(row_id).state, outbox.require(row_id).last_error) == ("held", CODE)
    assert "ServiceRequest.identifier" in _hold_reason(outbox, row_id)
    [after] = partner.search(
        "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/accession|ORD-1"
    )
    assert after == before and _patient_name(partner, after) == "陳大文"


def _transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def test_a_check_without_an_answer_is_retried_never_written_blind(
    partner: PartnerServer, store: Store
) -> None:
    """The partner failing the check (503 on the batch): retried with backoff like a
    failed send; nothing written until a check answered."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    row_id = outbox.enqueue(target, _study(A))[0]
    fault = {"mode": "503", "count": 1}
    partner.http.post("/$fault", json=fault).raise_for_status()
    with Deliverer(outbox, {"partner": target}, FAST, rng=random.Random(3)) as deliverer:
        deliverer.run_once()
        row = outbox.require(row_id)
        assert (row.state, row.last_error, row.last_status) == (
            "retrying",
            "delivery.partner-unavailable",
            503,
        )
        assert "overwrite check" in outbox.events(row_id)[-1].reason
        assert _studies(partner) == []
    _deliver(outbox, target, [row_id])
    assert outbox.require(row_id).state == "delivered"
    assert _patient_name(partner, _studies(partner)[0]) == "陳大文"


# -- (c) the same patient resending still updates ------------------------------------------
@pytest.mark.parametrize("check", [True, False], ids=["checked", "local-only"])
def test_the_same_patients_corrected_study_updates_as_before(
    partner: PartnerServer, store: Store, check: bool
) -> None:
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=check)
    outbox = Outbox(store)
    rows = [
        outbox.enqueue(target, _study(A, text))[0] for text in ("头颅CT平扫", "头颅CT平扫（更正）")
    ]
    _deliver(outbox, target, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered", "delivered"]
    [study] = _studies(partner)
    assert (
        study["description"] == "头颅CT平扫（更正）" and _patient_name(partner, study) == "陳大文"
    )


# -- (d) the check turned off sends as before ----------------------------------------------
def test_with_the_check_off_the_partner_is_not_asked(partner: PartnerServer, store: Store) -> None:
    """check_overwrite: false and nothing in the outbox: the update goes as before (the
    partner's own resource is replaced: what the check is there to stop)."""
    partner.reset()
    assert partner.post(_study(A)).status_code == 200
    target = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    outbox = Outbox(store)
    row_id = outbox.enqueue(target, _study(B))[0]
    _deliver(outbox, target, [row_id])
    assert outbox.require(row_id).state == "delivered"
    assert not [e for e in outbox.events(row_id) if "overwrite" in e.reason]
    assert _patient_name(partner, _studies(partner)[0]) == "李小明"


# -- visible like other holds ----------------------------------------------------------
def test_the_hold_shows_in_gateway_outbox_show_and_list(
    partner: PartnerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8)
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    rows = [outbox.enqueue(target, _study(swap))[0] for swap in (A, B)]
    _deliver(outbox, target, rows)
    store.close()
    assert main(["--home", str(tmp_path), "outbox", "show", str(rows[1]), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["last_error"]) == ("held", CODE)
    assert "ImagingStudy.identifier" in shown["events"][-1]["reason"]
    assert main(["--home", str(tmp_path), "outbox", "list", "--state", "held"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:3] for line in listed] == [[str(rows[1]), "partner", "held"]]


def test_the_partner_server_answers_the_check_batch(partner: PartnerServer) -> None:
    """What the check relies on at the real server: a batch of GET searches answered
    by one searchset per search."""
    partner.reset()
    assert partner.post(_study(A)).status_code == 200
    answer = partner.post(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "request": {
                        "method": "GET",
                        "url": f"ImagingStudy?identifier={STUDY_UID}",
                    }
                },
                {
                    "request": {
                        "method": "GET",
                        "url": f"Patient?identifier={MRN}|A0000001",
                    }
                },
            ],
        }
    )
    assert answer.status_code == 200, answer.text
    found = answer.json()
    assert found["type"] == "batch-response"
    [study] = [e["resource"] for e in found["entry"][0]["resource"]["entry"]]
    [patient] = [e["resource"] for e in found["entry"][1]["resource"]["entry"]]
    assert study["subject"]["reference"] == f"Patient/{patient['id']}"


# -- what the operator does ------------------------------------------------------------
def test_the_corrected_record_goes_on_while_the_held_one_stands_aside(
    partner: PartnerServer, store: Store
) -> None:
    """李小明's study is corrected at its source (a Study UID of its own): the corrected
    record is not kept back behind the held one, which would never go as it is."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    rows = [outbox.enqueue(target, _study(swap))[0] for swap in (A, B)]
    corrected = _study({**B, "20260610.1": "20260610.2"}, "头颅CT平扫")
    rows.append(outbox.enqueue(target, corrected)[0])
    _deliver(outbox, target, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered", "held", "delivered"]
    [theirs] = _studies(partner)
    assert _patient_name(partner, theirs) == "陳大文"
    [ours] = partner.search(
        "ImagingStudy?identifier=urn:dicom:uid|urn:oid:2.16.156.10011.99.1.4.3.20260610.2"
    )
    assert _patient_name(partner, ours) == "李小明"


def test_a_release_asks_the_partner_which_decides(partner: PartnerServer, store: Store) -> None:
    """Held locally; released while the partner still holds 陳大文's study: held again
    (at the partner). Once the partner's wrong study is gone (corrected there by a
    person), a release goes: the outbox's memory of the other row no longer decides."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    first = outbox.enqueue(target, _study(A))[0]
    _deliver(outbox, target, [first])
    second = outbox.enqueue(target, _study(B))[0]
    _deliver(outbox, target, [second])
    assert "this gateway queued or delivered" in _hold_reason(outbox, second)
    outbox.release(second, "checked the PACS: 李小明's UID is right")
    _deliver(outbox, target, [second])
    row = outbox.require(second)
    assert (row.state, row.last_error) == ("held", CODE)
    held = [e.reason for e in outbox.events(second) if e.to_state == "held"]
    assert "at the partner for another patient" in held[-1], held
    [wrong] = _studies(partner)
    partner.http.delete(f"/ImagingStudy/{wrong['id']}").raise_for_status()
    outbox.release(second, "the partner removed the wrong study")
    _deliver(outbox, target, [second])
    assert outbox.require(second).state == "delivered"
    [study] = _studies(partner)
    assert _patient_name(partner, study) == "李小明"


def test_a_record_split_into_parts_is_checked_as_a_whole(
    partner: PartnerServer, store: Store
) -> None:
    """Two entries a request: the study's part refers to its Patient by the conditional
    reference of an earlier part; the same patient's correction still goes, another
    patient's study is still held, before any part is sent."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=2)
    outbox = Outbox(store)
    rows = [
        outbox.enqueue(target, _study(swap, text))[0]
        for swap, text in ((A, "头颅CT平扫"), (A, "更正"), (B, None))
    ]
    assert outbox.require(rows[0]).part_count > 1
    _deliver(outbox, target, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered", "delivered", "held"]
    [study] = _studies(partner)
    assert study["description"] == "更正" and _patient_name(partner, study) == "陳大文"
    assert partner.search(f"Patient?identifier={MRN}|B0000002") == []


def test_a_failed_check_before_a_linked_records_first_send_still_links_it(
    partner: PartnerServer, store: Store
) -> None:
    """The report's links are settled at its first send; the check failing before it
    (503) must not send it later with its logical references only."""
    partner.reset()
    target = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    wait = timedelta(hours=1)
    examples = REPO / "examples"
    order = orjson.loads((examples / "hl7v2/bundles/orm_o01_lax2_ct.json").read_bytes())
    oru = orjson.loads((examples / "imaging/bundles/oru_r01_lax2_ct_cobranded.json").read_bytes())
    theirs = [outbox.enqueue(target, b, links_wait=wait)[0] for b in (order, _study({}))]
    _deliver(outbox, target, theirs)
    report = outbox.enqueue(target, oru, links_wait=wait)[0]
    partner.http.post("/$fault", json={"mode": "503", "count": 1}).raise_for_status()
    with Deliverer(outbox, {"partner": target}, FAST, rng=random.Random(3)) as deliverer:
        deliverer.run_once()
    assert outbox.require(report).state == "retrying"
    _deliver(outbox, target, [report])
    assert outbox.require(report).state == "delivered"
    [imaging] = _studies(partner)
    [diagnostic] = partner.search(
        "DiagnosticReport?identifier=https://fhir.njmu2.example.cn/sid/report|NJR2026061000001"
    )
    assert diagnostic["imagingStudy"][0]["reference"] == f"ImagingStudy/{imaging['id']}"
