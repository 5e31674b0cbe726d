"""A report variant joins the Chinese report with the partner's English one, and
carries every resource of its input: both must be one patient's, told by identifier.
Attacks: bare values without an assigning authority, the same number of another
hospital, look-alike values, a second patient hidden in the input."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import MappingError
from gateway.reports import ReportVariants
from tests.reports.conftest import english_bundle, nansha_bundle, report_of, resource_of

NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
LAX2_MRN = "https://fhir.lax2.example.cn/sid/mrn"
HKID = "http://www.immd.gov.hk/hkid"
PATIENT = "urn:uuid:00000000-0000-4000-8000-000000000013"
FINDINGS = "urn:uuid:00000000-0000-4000-8000-000000000016"
SECRETS = ("0098765", "0099999", "K583726", "许嘉玮", "李四", "HUI")


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _english(subject: dict[str, Any]) -> dict[str, Any]:
    """The partner's English report, bare, naming its patient by ``subject``."""
    report = report_of(english_bundle())
    bare = {k: v for k, v in report.items() if k not in ("result", "resultsInterpreter")}
    return bare | {"subject": subject}


def _nansha(identifiers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    bundle = nansha_bundle()
    if identifiers is not None:
        resource_of(bundle, PATIENT)["identifier"] = identifiers
    return bundle


def _refused(
    variants: ReportVariants, report: dict[str, Any], lang: str, english: Any = None
) -> MappingError:
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(report), lang, _bytes(english) if english else None)
    text = str(caught.value) + json.dumps(caught.value.issue.to_fhir(), ensure_ascii=False)
    for secret in SECRETS:
        assert secret not in text  # errors name reports and systems, never the patient
    return caught.value


def test_bare_values_without_an_authority_identify_no_one(variants: ReportVariants) -> None:
    # Two hospitals' MRN 0098765 without their systems: nothing says they are one patient.
    report = _nansha([{"value": "0098765"}])
    english = _english({"identifier": {"value": "0098765"}})
    error = _refused(variants, report, "bilingual", english)
    assert error.code == "mapping.report-patient-unidentified"


@pytest.mark.parametrize(
    "identifier",
    [
        {"system": LAX2_MRN, "value": "0098765"},  # the same number at another hospital
        {"system": NSCH_MRN, "value": "98765"},  # leading zeros dropped
        {"system": NSCH_MRN, "value": "0098765 "},  # padded
        {"system": NSCH_MRN.upper(), "value": "0098765"},  # the system's case
    ],
    ids=["other-authority", "leading-zeros", "whitespace", "system-case"],
)
def test_look_alike_identifiers_are_another_patient(
    variants: ReportVariants, identifier: dict[str, str]
) -> None:
    error = _refused(variants, _nansha(), "bilingual", _english({"identifier": identifier}))
    assert error.code == "mapping.translation-other-patient"


def test_an_hkid_differing_in_case_is_refused(variants: ReportVariants) -> None:
    report = _nansha(
        [{"system": NSCH_MRN, "value": "0098765"}, {"system": HKID, "value": "K583726A"}]
    )
    english = _english({"identifier": {"system": HKID, "value": "k583726a"}})
    error = _refused(variants, report, "bilingual", english)
    assert error.code == "mapping.translation-other-patient"


def _li_si() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "li-si",
        "identifier": [{"system": NSCH_MRN, "value": "0099999"}],
        "name": [{"text": "李四"}],
    }


@pytest.mark.parametrize("lang", ["zh-Hans", "zh-Hant-HK", "en", "bilingual"])
def test_a_second_patient_entry_is_refused_in_every_variant(
    variants: ReportVariants, lang: str
) -> None:
    report = _nansha()
    report["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000099",
            "resource": _li_si(),
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    error = _refused(variants, report, lang)
    assert error.code == "mapping.report-other-patient"
    assert error.expression == f"Bundle.entry[{len(report['entry']) - 1}].resource"


def test_a_stray_contained_patient_is_refused(variants: ReportVariants) -> None:
    report = _nansha()
    report_of(report)["contained"] = [_li_si()]
    error = _refused(variants, report, "zh-Hant-HK")
    assert error.code == "mapping.report-other-patient"


def test_a_patient_without_identifier_beside_the_subject_is_refused(
    variants: ReportVariants,
) -> None:
    report = _nansha()
    stray = {k: v for k, v in _li_si().items() if k != "identifier"}
    entry = {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000098", "resource": stray}
    report["entry"].append(entry | {"request": {"method": "POST", "url": "Patient"}})
    assert _refused(variants, report, "zh-Hans").code == "mapping.report-other-patient"


def test_findings_of_another_patient_are_refused_without_an_english_report(
    variants: ReportVariants,
) -> None:
    # Before any join: a single-language variant shows the findings under the subject.
    report = _nansha()
    resource_of(report, FINDINGS)["subject"] = {
        "identifier": {"system": NSCH_MRN, "value": "0099999"}
    }
    error = _refused(variants, report, "zh-Hant-HK")
    assert error.code == "mapping.report-other-patient"
    assert error.expression == "DiagnosticReport.result[0]"


def test_the_same_patient_twice_is_still_one_patient(variants: ReportVariants) -> None:
    report = _nansha()
    twin = dict(resource_of(report, PATIENT))
    report["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000097",
            "resource": twin | {"id": "00000000-0000-4000-8000-000000000097"},
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    variant = variants.variant(_bytes(report), "zh-Hant-HK")
    assert variant.resource["resourceType"] == "Bundle"
