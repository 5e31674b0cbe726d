"""The imaging story links up across separate conversions: the order (ORM/OMI), the
DICOM study and the radiology report (ORU) are converted one by one, as they arrive,
and their logical references (``type`` + ``identifier``, docs/partners.md) find each
other.

A partner finds the target by that identifier (the delivery stage may make the link
literal once the target is there); here a small index of the converted resources by
identifier plays that part."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

Index = dict[tuple[str, str, str], dict[str, Any]]


def _convert(converter: Converter, path: Path) -> list[dict[str, Any]]:
    records = converter.convert_path(path)
    assert records and all(r.ok for r in records), [i.line() for r in records for i in r.errors]
    return [e["resource"] for r in records if r.bundle for e in r.bundle["entry"]]


def _index(resources: list[dict[str, Any]]) -> Index:
    index: Index = {}
    for resource in resources:
        for identifier in resource.get("identifier", []):
            key = (resource["resourceType"], identifier["system"], identifier["value"])
            index[key] = resource
    return index


def _resolve(index: Index, reference: dict[str, Any]) -> dict[str, Any]:
    # A logical reference: never a literal or conditional one, which a strict partner
    # would have to resolve (and fail on) when the target is not there yet.
    assert "reference" not in reference
    kind, identifier = reference["type"], reference["identifier"]
    found = index.get((kind, identifier["system"], identifier["value"]))
    assert found is not None, f"{kind} {identifier} matches nothing converted"
    return found


def _one(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [r for r in resources if r["resourceType"] == kind]
    return found


@pytest.mark.parametrize(
    ("order", "study", "report", "accession"),
    [
        # Nansha: order, CTA study and Chinese report all from NSCH.
        (
            "hl7v2/omi_o23_nsch_ct.hl7",
            "imaging/nsch_cta.study",
            "imaging/oru_r01_nsch_cta_zh.hl7",
            "NS2026061500017",
        ),
        # Lai'an: order and study at LAX2, the co-branded report sent by NJMU2.
        (
            "hl7v2/orm_o01_lax2_ct.hl7",
            "imaging/lax2_ct_head.study",
            "imaging/oru_r01_lax2_ct_cobranded.hl7",
            "LA2026061000001",
        ),
    ],
    ids=["nansha", "lai'an-co-branded"],
)
def test_report_study_and_order_link_across_conversions(
    converter: Converter, order: str, study: str, report: str, accession: str
) -> None:
    orders = _convert(converter, EXAMPLES / order)
    studies = _convert(converter, EXAMPLES / study)
    reports = _convert(converter, EXAMPLES / report)
    index = _index(orders + studies + reports)

    imaging_study = _one(studies, "ImagingStudy")
    diagnostic_report = _one(reports, "DiagnosticReport")
    [by_study] = [_resolve(index, ref) for ref in imaging_study["basedOn"]]
    [by_report] = [_resolve(index, ref) for ref in diagnostic_report["basedOn"]]
    [studied] = [_resolve(index, ref) for ref in diagnostic_report["imagingStudy"]]

    # The report points at this study; study and report stand on the same order.
    assert studied is imaging_study
    assert by_study is by_report
    assert by_study["resourceType"] == "ServiceRequest"
    assert {i["value"] for i in by_study["identifier"]} >= {accession}
    # And the study is recognisable from the report's side: same accession number.
    study_accessions = {
        i["value"] for i in imaging_study["identifier"] if i["system"].endswith("/sid/accession")
    }
    assert study_accessions == {accession}
