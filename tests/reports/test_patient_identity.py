"""One patient per report (issue 8): the bilingual variant joins the Chinese report and
the partner's English report only when both name the same patient, by identifier,
however each side names it (a Patient entry, a contained Patient, a logical reference)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from gateway import Settings
from gateway.errors import MappingError
from gateway.reports import ReportVariants

from .conftest import english_bundle, nansha_bundle, report_of, resource_of

NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
HKID = "http://www.immd.gov.hk/hkid"
OTHER_MRN = "0099999"  # 李四, another patient of the Nansha hospital


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _bare_english(
    subject: dict[str, Any], contained: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The partner's English report as a bare DiagnosticReport (no Bundle, no Patient
    entry), naming its patient by ``subject``."""
    report = report_of(english_bundle())
    bare = {k: v for k, v in report.items() if k not in ("result", "resultsInterpreter")}
    bare["subject"] = subject
    if contained is not None:
        bare["contained"] = contained
    return bare


def _refused(variants: ReportVariants, english: dict[str, Any]) -> MappingError:
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha_bundle()), "bilingual", _bytes(english))
    return caught.value


def _no_patient_data(error: MappingError, both: bool = True) -> None:
    """The error names the reports (``both``: the two reports), never a patient."""
    text = str(error) + json.dumps(error.issue.to_fhir(), ensure_ascii=False)
    for secret in ("0098765", OTHER_MRN, "许嘉玮", "HUI", "KA WAI", "李四"):
        assert secret not in text
    assert ("NSR2026061701" in text) is both  # the Chinese report, by its identifier
    assert "HKR-2026-0617-01" in text  # the English report, by its identifier


def test_a_logical_reference_to_another_patient_is_refused(variants: ReportVariants) -> None:
    english = _bare_english({"identifier": {"system": NSCH_MRN, "value": OTHER_MRN}})
    error = _refused(variants, english)
    assert error.code == "mapping.translation-other-patient"
    assert error.expression == "DiagnosticReport.subject"
    _no_patient_data(error)


def test_a_contained_patient_of_another_patient_is_refused(variants: ReportVariants) -> None:
    other = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"system": NSCH_MRN, "value": OTHER_MRN}],
        "name": [{"text": "李四"}],
    }
    error = _refused(variants, _bare_english({"reference": "#p"}, [other]))
    assert error.code == "mapping.translation-other-patient"
    _no_patient_data(error)


def test_a_mismatch_on_any_shared_system_is_refused(variants: ReportVariants) -> None:
    # Same HKID (a shared system that agrees), but the Nansha MRN is another patient's.
    chinese = nansha_bundle()
    patient = resource_of(chinese, report_of(chinese)["subject"]["reference"])
    patient["identifier"].append({"system": HKID, "value": "K583726A"})
    english = english_bundle()
    theirs = resource_of(english, report_of(english)["subject"]["reference"])
    theirs["identifier"] = [
        {"system": HKID, "value": "K583726A"},
        {"system": NSCH_MRN, "value": OTHER_MRN},
    ]
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(chinese), "bilingual", _bytes(english))
    assert caught.value.code == "mapping.translation-other-patient"
    assert NSCH_MRN in caught.value.issue.message  # the system is named, not the values
    _no_patient_data(caught.value)


def test_no_identifier_in_common_is_refused(variants: ReportVariants) -> None:
    english = _bare_english({"identifier": {"system": HKID, "value": "K583726A"}})
    error = _refused(variants, english)
    assert error.code == "mapping.translation-other-patient"
    _no_patient_data(error)


def test_the_reference_and_the_resource_it_resolves_to_must_agree(
    variants: ReportVariants,
) -> None:
    english = english_bundle()
    report_of(english)["subject"]["identifier"] = {"system": NSCH_MRN, "value": OTHER_MRN}
    error = _refused(variants, english)
    assert error.code == "mapping.report-other-patient"
    _no_patient_data(error, both=False)


def test_findings_of_another_patient_in_the_english_report_are_refused(
    variants: ReportVariants,
) -> None:
    english = english_bundle()
    findings = resource_of(english, report_of(english)["result"][0]["reference"])
    findings["subject"] = {"identifier": {"system": NSCH_MRN, "value": OTHER_MRN}}
    error = _refused(variants, english)
    assert error.code == "mapping.report-other-patient"
    assert error.expression == "DiagnosticReport.result[0]"
    _no_patient_data(error, both=False)


@pytest.mark.parametrize(
    "subject",
    [
        {"identifier": {"system": NSCH_MRN, "value": "0098765"}},  # logical
        {"reference": "#p"},  # contained
    ],
)
def test_the_same_patient_named_any_way_is_accepted(
    variants: ReportVariants, subject: dict[str, Any]
) -> None:
    same = {
        "resourceType": "Patient",
        "id": "p",
        "identifier": [{"system": NSCH_MRN, "value": "0098765"}],
    }
    english = _bare_english(subject, [same] if "reference" in subject else None)
    variant = variants.variant(_bytes(nansha_bundle()), "bilingual", _bytes(english))
    assert not variant.pending


@pytest.mark.parametrize(
    "subject",
    [None, {"display": "HUI KA WAI"}, {"reference": "Patient/elsewhere"}],
)
def test_an_english_report_without_patient_identity_is_refused(
    variants: ReportVariants, subject: dict[str, Any] | None
) -> None:
    english = _bare_english(subject or {})
    if subject is None:
        del english["subject"]
    error = _refused(variants, english)
    assert error.code == "mapping.report-patient-unidentified"
    assert error.expression == "DiagnosticReport.subject"
    assert "English report HKR-2026-0617-01" in error.issue.message


def test_missing_identity_may_be_allowed_by_configuration(settings: Settings) -> None:
    lenient = ReportVariants(dataclasses.replace(settings, report_require_patient_identity=False))
    english = _bare_english({"display": "HUI KA WAI"})
    variant = lenient.variant(_bytes(nansha_bundle()), "bilingual", _bytes(english))
    assert not variant.pending
    # ... but a patient who is named and differs is refused all the same
    other = _bare_english({"identifier": {"system": NSCH_MRN, "value": OTHER_MRN}})
    with pytest.raises(MappingError) as caught:
        lenient.variant(_bytes(nansha_bundle()), "bilingual", _bytes(other))
    assert caught.value.code == "mapping.translation-other-patient"


def test_the_setting_reads_from_the_environment(tmp_path: Any) -> None:
    env = {"GATEWAY_REPORT_REQUIRE_PATIENT_IDENTITY": "false"}
    assert Settings.load(home=tmp_path, env=env).report_require_patient_identity is False
    assert Settings.load(home=tmp_path, env={}).report_require_patient_identity is True


@pytest.mark.parametrize(
    ("kind", "key", "extra"),
    [
        ("ImagingStudy", "subject", {"status": "available"}),
        ("ServiceRequest", "subject", {"status": "active", "intent": "order"}),
        ("Encounter", "subject", {"status": "finished", "class": {"code": "AMB"}}),
        ("Coverage", "beneficiary", {"status": "active", "payor": [{"display": "HA"}]}),
    ],
)
def test_a_resource_of_another_patient_in_the_input_is_refused(
    variants: ReportVariants, kind: str, key: str, extra: dict[str, Any]
) -> None:
    # 李四's study beside 许嘉玮's report: named by a logical reference, no Patient entry
    # of 李四 that the Patient check would meet. A variant carries every entry.
    chinese = nansha_bundle()
    other = {
        "resourceType": kind,
        "id": "00000000-0000-4000-8000-000000000099",
        key: {"type": "Patient", "identifier": {"system": NSCH_MRN, "value": OTHER_MRN}},
        **extra,
    }
    chinese["entry"].append(
        {
            "fullUrl": f"urn:uuid:{other['id']}",
            "resource": other,
            "request": {"method": "POST", "url": kind},
        }
    )
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(chinese), "zh-Hant-HK")
    error = caught.value
    assert error.code == "mapping.report-other-patient"
    assert error.expression == f"Bundle.entry[6].resource.{key}"
    text = str(error) + json.dumps(error.issue.to_fhir(), ensure_ascii=False)
    assert "NSR2026061701" in text and NSCH_MRN in text  # the report and the system
    assert not any(secret in text for secret in ("0098765", OTHER_MRN, "许嘉玮", "李四"))


def test_a_resource_of_the_reports_patient_is_accepted(variants: ReportVariants) -> None:
    chinese = nansha_bundle()
    study = {
        "resourceType": "ImagingStudy",
        "id": "00000000-0000-4000-8000-000000000099",
        "status": "available",
        "subject": {"reference": report_of(chinese)["subject"]["reference"]},
    }
    chinese["entry"].append(
        {
            "fullUrl": f"urn:uuid:{study['id']}",
            "resource": study,
            "request": {"method": "POST", "url": "ImagingStudy"},
        }
    )
    variants.variant(_bytes(chinese), "zh-Hant-HK")
