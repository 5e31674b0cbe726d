"""References at the partner (issue #13 item 4), against the real partner server in
strict mode: an order, its DICOM study and its report queued in the wrong order all end
applied and linked there (the study's and the report's references resolve to the
partner's own resources); a record whose target never comes goes after
``delivery_reference_wait`` with the logical reference only, and says so."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer

from .conftest import Clock, bundle

FAST = DeliveryConfig(backoff_base=0.05, backoff_cap=0.2, max_attempts=10, read_timeout=30)
BUNDLES = REPO / "examples"
ACCESSION = "https://fhir.lax2.example.cn/sid/accession|LA2026061000001"
STUDY = "urn:dicom:uid|urn:oid:2.16.156.10011.99.1.4.3.20260610.1"
REPORT = "https://fhir.njmu2.example.cn/sid/report|NJR2026061000001"


def _bundle(name: str) -> dict[str, Any]:
    found = orjson.loads((BUNDLES / name).read_bytes())
    assert isinstance(found, dict)
    return found


def _one(partner: PartnerServer, query: str) -> dict[str, Any]:
    [found] = partner.search(query)
    return found


def test_order_study_and_report_in_the_wrong_order_end_linked(
    partner: PartnerServer, tmp_path: Path
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    wait = timedelta(hours=1)
    report, study, order = (
        outbox.enqueue(medplum, _bundle(name), links_wait=wait)[0]
        for name in (
            "imaging/bundles/oru_r01_lax2_ct_cobranded.json",
            "imaging/bundles/lax2_ct_head.json",
            "hl7v2/bundles/orm_o01_lax2_ct.json",
        )
    )
    # One patient: without the links the report (first queued) would go first.
    assert len({outbox.require(r).order_key for r in (report, study, order)}) == 1
    with Deliverer(outbox, {"partner": medplum}, FAST, rng=random.Random(3)) as deliverer:
        assert [r.id for r in outbox.due(outbox.clock())] == [order]  # the others wait
        for _ in range(50):
            deliverer.run_once()
            if all(outbox.require(r).state == "delivered" for r in (report, study, order)):
                break
    states = [outbox.require(r).state for r in (order, study, report)]
    assert states == ["delivered"] * 3, [outbox.require(r).last_response for r in (study, report)]
    # Delivered in the order the links need: order, then study, then report.
    finished = [
        next(e.at for e in outbox.events(r) if e.to_state == "delivered")
        for r in (order, study, report)
    ]
    assert finished == sorted(finished)
    # Linked at the partner: the references resolved to the partner's own resources.
    request = _one(partner, f"ServiceRequest?identifier={ACCESSION}")
    imaging = _one(partner, f"ImagingStudy?identifier={STUDY}")
    diagnostic = _one(partner, f"DiagnosticReport?identifier={REPORT}")
    assert imaging["basedOn"][0]["reference"] == f"ServiceRequest/{request['id']}"
    assert diagnostic["basedOn"][0]["reference"] == f"ServiceRequest/{request['id']}"
    assert diagnostic["imagingStudy"][0]["reference"] == f"ImagingStudy/{imaging['id']}"
    said = [e.reason for e in outbox.events(report)]
    assert any("linked to ImagingStudy, ServiceRequest" in reason for reason in said), said
    store.close()


def test_a_target_that_never_comes_goes_logical_only_and_says_so(
    partner: PartnerServer, tmp_path: Path
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    clock = Clock()
    outbox = Outbox(store, clock)
    study = outbox.enqueue(
        medplum, _bundle("imaging/bundles/lax2_ct_head.json"), links_wait=timedelta(seconds=600)
    )[0]
    with Deliverer(outbox, {"partner": medplum}, FAST, rng=random.Random(3)) as deliverer:
        assert deliverer.run_once() == 0  # waits for its order
        clock.advance(601)
        assert deliverer.run_once() == 1
    row = outbox.require(study)
    assert row.state == "delivered"
    said = [e.reason for e in outbox.events(study)]
    assert any(
        "delivery.reference-timeout: sent with the logical reference only: ServiceRequest "
        "(https://fhir.lax2.example.cn/sid/accession)" in reason
        for reason in said
    ), said
    imaging = _one(partner, f"ImagingStudy?identifier={STUDY}")
    assert "reference" not in imaging["basedOn"][0]  # logical: type and identifier only
    assert imaging["basedOn"][0]["identifier"]["value"] == "LA2026061000001"
    store.close()


def test_a_waiting_record_steps_aside_for_its_patients_later_ones(outbox: Outbox) -> None:
    """Order per patient holds for records that do not wait: the report waiting for
    its study does not keep the patient's referral back."""
    from gateway.partners import Partner as P

    here = P("hkpmc", "https://fhir.hkpmc.example.hk/fhir/R4")
    report = _bundle("imaging/bundles/oru_r01_lax2_ct_cobranded.json")
    waiting = outbox.enqueue(here, report, links_wait=timedelta(seconds=60))[0]
    referral = outbox.enqueue(
        here, bundle("P1", "O1"), order_key=outbox.require(waiting).order_key
    )[0]
    assert [r.id for r in outbox.due(outbox.clock())] == [referral]
    # Without a wait, the same report is due at once (and keeps its patient's order).
    other = outbox.enqueue(
        here, {**report, "identifier": {"system": "urn:x", "value": "2"}}, links_wait=None
    )[0]
    assert outbox.require(other).links_until is None
