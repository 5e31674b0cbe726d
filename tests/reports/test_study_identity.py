"""One study per bilingual report: the English report joined to a Chinese one must be of
the same study and order, by identifier, wherever both name one in the same system
(the accession of ``basedOn``, the Study Instance UID of ``imagingStudy``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import MappingError
from gateway.reports import ReportVariants

from .conftest import english_bundle, nansha_bundle, report_of

NSCH_ACCESSION = "https://fhir.nsch.example.cn/sid/accession"
STUDY = "urn:oid:2.16.156.10011.99.1.1.3.20260617.21"


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _order(report: dict[str, Any], value: str) -> None:
    report["basedOn"] = [
        {"type": "ServiceRequest", "identifier": {"system": NSCH_ACCESSION, "value": value}}
    ]


def _study(report: dict[str, Any], uid: str) -> None:
    report["imagingStudy"] = [
        {"type": "ImagingStudy", "identifier": {"system": "urn:dicom:uid", "value": uid}}
    ]


def _pair(english_order: str, english_study: str) -> tuple[bytes, bytes]:
    """The Nansha report and its English report, both naming the Nansha accession and
    the study by UID, as the HL7 v2 conversions write them."""
    chinese, english = nansha_bundle(), english_bundle()
    _order(report_of(chinese), "NS2026061700021")
    _study(report_of(chinese), STUDY)
    _order(report_of(english), english_order)
    _study(report_of(english), english_study)
    return _bytes(chinese), _bytes(english)


def test_the_same_order_and_study_are_joined(variants: ReportVariants) -> None:
    chinese, english = _pair("NS2026061700021", STUDY)
    assert not variants.variant(chinese, "bilingual", english).pending


@pytest.mark.parametrize(
    ("order", "study", "field"),
    [
        # another exam of the same patient, same accession system
        ("NS2026061700099", STUDY, "DiagnosticReport.basedOn"),
        # the accession written differently (case, white space, full width) is another
        ("ns2026061700021", STUDY, "DiagnosticReport.basedOn"),
        ("NS2026061700021 ", STUDY, "DiagnosticReport.basedOn"),
        ("ＮＳ2026061700021", STUDY, "DiagnosticReport.basedOn"),
        # the same accession, but the images of another study
        ("NS2026061700021", STUDY + ".1", "DiagnosticReport.imagingStudy"),
    ],
)
def test_an_english_report_of_another_study_is_refused(
    variants: ReportVariants, order: str, study: str, field: str
) -> None:
    chinese, english = _pair(order, study)
    with pytest.raises(MappingError) as caught:
        variants.variant(chinese, "bilingual", english)
    error = caught.value
    assert error.code == "mapping.translation-other-study"
    assert error.expression == field
    message = error.issue.message
    assert "NSR2026061701" in message and "HKR-2026-0617-01" in message  # the two reports
    assert order not in message and study not in message  # systems named, never values


def test_an_accession_of_another_institution_is_not_compared(variants: ReportVariants) -> None:
    # The partner's own accession system (the conftest's English report names the
    # Nansha number under the Hong Kong centre's system): nothing to compare, accepted.
    chinese, english = nansha_bundle(), english_bundle()
    variant = variants.variant(_bytes(chinese), "bilingual", _bytes(english))
    assert not variant.pending


def test_an_order_reference_naming_two_accessions_is_refused(variants: ReportVariants) -> None:
    # The English report's basedOn names the Nansha accession as its logical identifier
    # but points at a ServiceRequest entry of another exam: the reference is of two
    # orders, and the one agreeing identifier must not pass it as the report's order.
    chinese, english = nansha_bundle(), english_bundle()
    _order(report_of(chinese), "NS2026061700021")
    _order(report_of(english), "NS2026061700021")
    order = {
        "resourceType": "ServiceRequest",
        "id": "sr-other",
        "identifier": [{"system": NSCH_ACCESSION, "value": "NS2026061700099"}],
        "status": "completed",
        "intent": "order",
        "subject": report_of(english)["subject"],
    }
    english["entry"].append(
        {
            "fullUrl": "urn:uuid:5a1e0c3e-0000-4000-8000-00000000a099",
            "resource": order,
            "request": {"method": "POST", "url": "ServiceRequest"},
        }
    )
    report_of(english)["basedOn"][0]["reference"] = "urn:uuid:5a1e0c3e-0000-4000-8000-00000000a099"
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(chinese), "bilingual", _bytes(english))
    assert caught.value.code == "mapping.translation-other-study"
    assert caught.value.expression == "DiagnosticReport.basedOn"


@pytest.mark.parametrize(
    "based_on",
    [
        [{"reference": "ServiceRequest/sr-77"}],  # a server's order, not in the Bundle
        [{"reference": "urn:uuid:5a1e0c3e-0000-4000-8000-00000000a077"}],
        None,  # no order named at all
    ],
)
def test_an_english_order_named_by_no_identifier_is_not_compared(
    variants: ReportVariants, based_on: list[dict[str, str]] | None
) -> None:
    # A reference that carries no identifier, to an order the English report's input
    # does not hold, names nothing that can be compared by identifier: it is treated as
    # a report naming no order (refusing it would only make partners drop basedOn).
    # The pair is still bound by the translation-of report identifier and the patient.
    chinese, english = nansha_bundle(), english_bundle()
    _order(report_of(chinese), "NS2026061700021")
    if based_on is None:
        del report_of(english)["basedOn"]
    else:
        report_of(english)["basedOn"] = based_on
    assert not variants.variant(_bytes(chinese), "bilingual", _bytes(english)).pending
