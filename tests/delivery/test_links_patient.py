"""Links at the partner check the patient (docs/delivery.md, "Links at the partner"),
against the real partner server, on SQLite and PostgreSQL: a report (ORU →
DiagnosticReport) whose Study UID and accession number belong to a study and an order
of ANOTHER patient (李四) already delivered there is held, neither linked to them nor
sent unlinked, its reason naming the fields and no patient data; a report naming no
patient identifier is held too; the same patient's report links as before."""

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
from gateway.store import Store, metadata
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer

FAST = DeliveryConfig(backoff_base=0.05, backoff_cap=0.2, max_attempts=10, read_timeout=30)
BUNDLES = REPO / "examples"
ORU = "imaging/bundles/oru_r01_lax2_ct_cobranded.json"  # 王伟's report
STUDY = "imaging/bundles/lax2_ct_head.json"  # 王伟's study
ORDER = "hl7v2/bundles/orm_o01_lax2_ct.json"  # 王伟's order
STUDY_UID = "urn:dicom:uid|urn:oid:2.16.156.10011.99.1.4.3.20260610.1"
REPORT = "https://fhir.njmu2.example.cn/sid/report|NJR2026061000001"
# 王伟 → 李四: every identifier, every name; the study's UID and accession stay.
OTHER = {
    "0012345": "0099999",
    "J20250043": "J20259999",
    "341122196604200135": "110101196001010011",
    "王伟": "李四",
    '"王"': '"李"',
    "伟": "四",
    "WANG": "LI",
    "WEI": "SI",
}
# Nothing of either patient, nor the identifiers linked by, may be in a reason.
SECRETS = ("0012345", "0099999", "341122", "110101", "J2025", "王", "李", "LA2026061000001")
WAIT = timedelta(hours=1)


def _bundle(name: str, swap: dict[str, str] | None = None) -> dict[str, Any]:
    text = (BUNDLES / name).read_text(encoding="utf-8")
    for old, new in (swap or {}).items():
        text = text.replace(old, new)
    found = orjson.loads(text)
    assert isinstance(found, dict)
    return found


def _deliver(outbox: Outbox, medplum: Partner, rows: list[int]) -> None:
    with Deliverer(outbox, {"partner": medplum}, FAST, rng=random.Random(3)) as deliverer:
        for _ in range(50):
            deliverer.run_once()
            if all(outbox.require(r).state in ("delivered", "held", "dead") for r in rows):
                return


def test_a_report_naming_another_patients_study_is_held(
    partner: PartnerServer, store: Store
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    # 李四's order and study, delivered first, carry the accession and Study UID that
    # 王伟's report names (an accession number reused by another hospital or year).
    theirs = [
        outbox.enqueue(medplum, _bundle(name, OTHER), links_wait=WAIT)[0] for name in (ORDER, STUDY)
    ]
    _deliver(outbox, medplum, theirs)
    assert [outbox.require(r).state for r in theirs] == ["delivered"] * 2
    report = outbox.enqueue(medplum, _bundle(ORU), links_wait=WAIT)[0]
    _deliver(outbox, medplum, [report])
    row = outbox.require(report)
    assert row.state == "held"
    assert row.last_error == "delivery.link-other-patient"
    [reason] = [e.reason for e in outbox.events(report) if e.to_state == "held"]
    assert "DiagnosticReport.imagingStudy identifier (ImagingStudy" in reason, reason
    assert "DiagnosticReport.basedOn identifier (ServiceRequest" in reason, reason
    assert f"gateway outbox release {report}" in reason
    assert not [s for s in SECRETS if s in reason], reason
    # Neither linked nor sent unlinked: the partner has no such report.
    assert partner.search(f"DiagnosticReport?identifier={REPORT}") == []
    # 李四's study is still 李四's alone.
    [study] = partner.search(f"ImagingStudy?identifier={STUDY_UID}")
    [patient] = partner.search(f"Patient?_id={study['subject']['reference'].split('/')[-1]}")
    assert patient["name"][0]["text"] == "李四"
    # A release checks again: still another patient's study, still held.
    outbox.release(report, "checked")
    _deliver(outbox, medplum, [report])
    assert outbox.require(report).state == "held"
    assert partner.search(f"DiagnosticReport?identifier={REPORT}") == []


def test_a_report_naming_no_patient_identifier_is_held(
    partner: PartnerServer, store: Store
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    theirs = [outbox.enqueue(medplum, _bundle(name), links_wait=WAIT)[0] for name in (ORDER, STUDY)]
    _deliver(outbox, medplum, theirs)
    oru = _bundle(ORU)
    for entry in oru["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"].pop("identifier")
    report = outbox.enqueue(medplum, oru, links_wait=WAIT)[0]
    _deliver(outbox, medplum, [report])
    row = outbox.require(report)
    assert (row.state, row.last_error) == ("held", "delivery.link-unknown-patient")
    [reason] = [e.reason for e in outbox.events(report) if e.to_state == "held"]
    assert "DiagnosticReport.basedOn identifier (ServiceRequest" in reason, reason
    assert "names no patient identifier" in reason
    assert not [s for s in SECRETS if s in reason], reason


def test_the_same_patients_report_links_as_before(partner: PartnerServer, store: Store) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    rows = [
        outbox.enqueue(medplum, _bundle(name), links_wait=WAIT)[0] for name in (ORU, STUDY, ORDER)
    ]
    _deliver(outbox, medplum, rows)
    assert [outbox.require(r).state for r in rows] == ["delivered"] * 3
    [imaging] = partner.search(f"ImagingStudy?identifier={STUDY_UID}")
    [diagnostic] = partner.search(f"DiagnosticReport?identifier={REPORT}")
    assert diagnostic["imagingStudy"][0]["reference"] == f"ImagingStudy/{imaging['id']}"
    assert diagnostic["subject"]["reference"] == imaging["subject"]["reference"]


def test_the_hold_shows_in_gateway_outbox_show(
    partner: PartnerServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    theirs = [
        outbox.enqueue(medplum, _bundle(name, OTHER), links_wait=WAIT)[0] for name in (ORDER, STUDY)
    ]
    _deliver(outbox, medplum, theirs)
    report = outbox.enqueue(medplum, _bundle(ORU), links_wait=WAIT)[0]
    _deliver(outbox, medplum, [report])
    store.close()
    assert main(["--home", str(tmp_path), "outbox", "show", str(report), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["last_error"]) == ("held", "delivery.link-other-patient")
    assert "DiagnosticReport.imagingStudy identifier" in shown["events"][-1]["reason"]
    assert main(["--home", str(tmp_path), "outbox", "list", "--state", "held"]) == 0
    listed = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:3] for line in listed] == [[str(report), "partner", "held"]]


def test_a_report_queued_before_the_migration_is_held(partner: PartnerServer, store: Store) -> None:
    """Rows queued before 0011_link_patients kept no patient: nothing to compare."""
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    outbox = Outbox(store)
    ours = [outbox.enqueue(medplum, _bundle(name), links_wait=WAIT)[0] for name in (ORDER, STUDY)]
    _deliver(outbox, medplum, ours)
    report = outbox.enqueue(medplum, _bundle(ORU), links_wait=WAIT)[0]
    links = metadata.tables["outbox_links"]
    with store.engine.begin() as conn:
        conn.execute(links.update().where(links.c.outbox_id == report).values(patients=None))
    _deliver(outbox, medplum, [report])
    row = outbox.require(report)
    assert (row.state, row.last_error) == ("held", "delivery.link-unknown-patient")
    assert partner.search(f"DiagnosticReport?identifier={REPORT}") == []
