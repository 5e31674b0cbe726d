"""Every HL7 v2 message of the public corpus (../shared/corpus/hl7v2/) converts, or
fails with the specific reason pinned here: orders and referrals, radiology results
(ORU^R01), laboratory results (refused: radiology only) and other kinds (MDM)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter

# file → what the gateway must say: ("ok", {resourceType: count}) or ("error", code, location)
ORDERS_AND_REFERRALS: dict[str, tuple[Any, ...]] = {
    "ms_REF-I12-01.hl7": ("ok", {"ServiceRequest": 1, "Patient": 1, "Condition": 1}),
    "ms_REF-I14-01.hl7": ("ok", {"ServiceRequest": 1, "Patient": 1, "Condition": 1}),
    "ms_ORM-O01-01.hl7": ("ok", {"ServiceRequest": 1, "Patient": 1, "Condition": 1}),
    "ms_ORM-O01-03.hl7": ("ok", {"ServiceRequest": 2, "Patient": 1, "Condition": 1}),
    "dcm4che_ORM_O01.hl7": ("ok", {"ServiceRequest": 1, "Patient": 1}),
    # Declared 8859/1 but OBR-31 holds a UTF-8 en dash: refused unless the sender is set
    # to charset_mismatch: decode (issue 8; they were read as UTF-8 with a warning before).
    "dcm4che_OMI_O23-ImagingOrder.hl7": ("error", "intake.charset-mislabelled", "MSH-18"),
    "dcm4che_OMG_O19-GeneralClinicalOrder-Eyecare.hl7": (
        "error",
        "intake.charset-mislabelled",
        "MSH-18",
    ),
    "v2tofhir_ORM_O01-IHE-RAD-4-Message-v2.3.1.txt": ("ok", {"ServiceRequest": 1}),
    # ORC-5 holds 'NW', an order *control* code, where an order *status* belongs.
    "ms_LAB-ORM-1.hl7": ("error", "mapping.unknown-code", "ORC-5"),
    # Its orders carry only ORC-4 (placer group): no placer, filler or accession number
    # to identify them by, so a resend could not be recognised at the partner.
    "ms_OMG-O19-01.hl7": ("error", "mapping.no-identity", "ORC(1)"),
}
_LAB = ("error", "mapping.required", "OBR-24")  # laboratory results: not a radiology report
_EMPTY_FINAL = ("error", "validation.invariant", "Bundle.entry[2].resource")
RESULTS: dict[str, tuple[Any, ...]] = {
    # IHE-style radiology results: the study UID in OBX 113014 links the report to the
    # ImagingStudy; the CDA one carries its CDA document inline (ED, text/xml).
    "dcm4che_ORU_R01-CDA.hl7": ("ok", {"DiagnosticReport": 1, "Patient": 1}),
    # A final report whose findings are in OBX the report mapping does not carry (SR
    # measurements, codes of other systems), and an echocardiogram report (OBR-24 CT)
    # with no coded OBX: each would leave as a final report saying nothing, which the
    # DiagnosticReport profile's gw-dr-2 refuses (nothing leaves half converted).
    "dcm4che_ORU_R01-SR.hl7": _EMPTY_FINAL,
    "lfh_ORU-multiline-short.hl7": _EMPTY_FINAL,
    "ms_ORU-R01-RMGEAD.hl7": _LAB,
    "ms_LAB-ORU-1.hl7": _LAB,
    "v2tofhir_ORU_R01-Basic-NG-ExampleMessage-v2.5.1.txt": _LAB,
}
OTHER_KINDS = {"ms_MDM-T02-01.hl7": "MDM^T02"}


def _counts(bundle: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for entry in bundle["entry"]:
        t = entry["resource"]["resourceType"]
        out[t] = out.get(t, 0) + 1
    return out


def test_the_table_covers_every_corpus_message(corpus: Path) -> None:
    files = {p.name for p in (corpus / "hl7v2").iterdir()}
    pinned = set(ORDERS_AND_REFERRALS) | set(RESULTS) | set(OTHER_KINDS)
    assert files == pinned | {"dcm4che_ORU_R01-PDF.hl7"}


@pytest.mark.parametrize("name", sorted({**ORDERS_AND_REFERRALS, **RESULTS}))
def test_corpus_message(corpus: Path, converter: Converter, name: str) -> None:
    [record] = converter.convert((corpus / "hl7v2" / name).read_bytes(), source=name)
    expected = {**ORDERS_AND_REFERRALS, **RESULTS}[name]
    if expected[0] == "ok":
        assert record.ok, [i.line() for i in record.errors]
        assert record.bundle is not None
        counts = _counts(record.bundle)
        assert {k: counts.get(k, 0) for k in expected[1]} == expected[1]
    else:
        [error] = record.errors
        assert (error.code, error.location) == expected[1:]
        assert error.record == f"{name}, message {record.control_id}"


def test_corpus_referral_maps_its_business_fields(corpus: Path, converter: Converter) -> None:
    [record] = converter.convert((corpus / "hl7v2/ms_REF-I12-01.hl7").read_bytes())
    assert record.bundle is not None
    request = next(
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ServiceRequest"
    )
    assert request["identifier"][0]["value"] == "226839"  # RF1-6 (namespace EPIC)
    assert request["identifier"][0]["system"].endswith("/EPIC/sid/referral")
    assert (request["status"], request["priority"]) == ("active", "routine")  # RF1-1 P, RF1-2 R
    assert request["code"]["coding"][0]["code"] == "Med"
    assert request["note"][0]["text"] == "Lab Test for Ulcer"


def test_mislabelled_8859_1_is_refused_naming_the_likely_charset(
    corpus: Path, converter: Converter
) -> None:
    path = corpus / "hl7v2/dcm4che_OMI_O23-ImagingOrder.hl7"
    [record] = converter.convert(path.read_bytes())
    assert not record.ok and record.bundle is None
    [error] = record.errors
    assert (error.code, error.location) == ("intake.charset-mislabelled", "MSH-18")
    assert "OBR-31" in error.message and "UNICODE UTF-8" in error.message


def test_corpus_radiology_report_links_its_studies(corpus: Path, converter: Converter) -> None:
    [record] = converter.convert((corpus / "hl7v2/dcm4che_ORU_R01-CDA.hl7").read_bytes())
    assert record.bundle is not None
    [report] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    studies = [s["identifier"]["value"] for s in report["imagingStudy"]]
    assert studies == [
        "urn:oid:2.16.840.1.113669.632.20.540351.10004609971",
        "urn:oid:1.2.392.200036.9125.0.198811291108.7",
    ]
    assert report["status"] == "final"  # OBR-25 F
    [form] = report["presentedForm"]  # the inline CDA document (OBX-5 ED text/xml)
    assert form["contentType"] == "text/xml"
    assert base64.b64decode(form["data"]).decode().startswith("<?xml")


@pytest.mark.parametrize("name", sorted(OTHER_KINDS))
def test_other_message_kinds_are_refused_by_type(
    corpus: Path, converter: Converter, name: str
) -> None:
    [record] = converter.convert((corpus / "hl7v2" / name).read_bytes())
    [error] = record.errors
    assert error.code == "mapping.unsupported-message" and error.location == "MSH-9"
    assert OTHER_KINDS[name] in error.message


def test_wrapped_base64_line_is_a_segment_syntax_error(corpus: Path, converter: Converter) -> None:
    # Upstream wrapped the OBX base64 PDF at 4096 characters; the continuation line is
    # not a segment.
    [record] = converter.convert((corpus / "hl7v2/dcm4che_ORU_R01-PDF.hl7").read_bytes())
    [error] = record.errors
    assert error.code == "intake.segment-syntax" and error.location == "segment 10"
