"""Who signs the English column: only the radiologist of the partner's English report.

The Chinese report of 何慧敏 (Nansha) is joined with the English report of 陳志明 /
CHAN Chi Ming (Hong Kong). Whatever shape the English report arrives in, the English
column must never show the Chinese report's radiologist as the one who signed it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from gateway.errors import MappingError
from gateway.reports import ReportVariants

from .conftest import english_bundle, nansha_bundle, report_of

CHINESE_SIGNER = ("何慧敏", "HE Huimin")  # the Nansha radiologist, as either column names her
NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _english_column(html: bytes) -> str:
    """The English column's radiologist and signature blocks (the page's last two)."""
    page = html.decode("utf-8")
    columns = re.findall(r'<div class="col" lang="en">(.*?)</div>(?=</div>|<div)', page, re.S)
    return "".join(columns[-2:])


def _english_shows(variants: ReportVariants, report: Any, english: dict[str, Any]) -> str:
    variant = variants.variant(_bytes(report), "zh-Hant-HK+en", _bytes(english))
    assert not variant.pending
    return _english_column(variant.html)


def test_the_english_report_of_the_partner_signs_the_english_column(
    variants: ReportVariants,
) -> None:
    shown = _english_shows(variants, nansha_bundle(), english_bundle())
    assert "Signed by: CHAN Chi Ming" in shown
    assert not any(name in shown for name in CHINESE_SIGNER)


def test_an_english_report_naming_no_radiologist_is_not_signed_by_the_chinese_one(
    variants: ReportVariants,
) -> None:
    english = english_bundle()
    del report_of(english)["resultsInterpreter"]
    shown = _english_shows(variants, nansha_bundle(), english)
    assert not any(name in shown for name in CHINESE_SIGNER)
    assert "Signed by: —" in shown and "pending" not in shown  # it is reported


def test_a_bare_chinese_report_keeps_the_english_radiologists_name(
    variants: ReportVariants,
) -> None:
    # The Chinese report as a lone DiagnosticReport: the English report's entries cannot
    # be copied beside it, so its radiologist is carried by name.
    chinese = nansha_bundle()
    bare = {k: v for k, v in report_of(chinese).items() if k != "result"}
    bare["subject"] = {"identifier": {"system": NSCH_MRN, "value": "0098765"}}
    bare["performer"] = [{"display": "广州市第一人民医院南沙医院", "type": "Organization"}]
    bare["resultsInterpreter"] = [{"display": "何慧敏", "type": "PractitionerRole"}]
    english = english_bundle()
    del report_of(english)["result"]  # no findings Observation of the report to carry them
    shown = _english_shows(variants, bare, english)
    assert "CHAN Chi Ming" in shown
    assert not any(name in shown for name in CHINESE_SIGNER)


def test_english_entries_whose_full_urls_are_taken_by_other_resources_are_refused(
    variants: ReportVariants,
) -> None:
    # The English Bundle's PractitionerRole and Practitioner have the fullUrls of the
    # Chinese Bundle's: resolved in the variant, they would be 何慧敏's.
    text = json.dumps(english_bundle())
    for english, chinese in (("000000000025", "000000000015"), ("000000000024", "000000000014")):
        text = text.replace(english, chinese)
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha_bundle()), "zh-Hant-HK+en", text.encode("utf-8"))
    error = caught.value
    assert error.code == "mapping.translation-entry-conflict"
    assert "urn:uuid:00000000-0000-4000-8000-000000000015" in error.issue.message
    assert "0098765" not in str(error) and "许嘉玮" not in str(error)


def test_the_same_resource_in_both_bundles_is_kept_once(variants: ReportVariants) -> None:
    # The HL7 v2 conversions give one institution the same fullUrl wherever it is met:
    # the Hong Kong centre's Organization in both Bundles is one resource, not a clash.
    chinese, english = nansha_bundle(), english_bundle()
    hkpmc = next(e for e in english["entry"] if e["resource"]["resourceType"] == "Organization")
    chinese["entry"].insert(0, json.loads(json.dumps(hkpmc)))
    chinese["entry"][0]["resource"]["name"] = "大灣區醫療集團香港合作醫療中心"
    out = variants.variant(_bytes(chinese), "bilingual", _bytes(english)).resource
    urls = [e["fullUrl"] for e in out["entry"]]
    assert urls.count(hkpmc["fullUrl"]) == 1


def _second_finding(english: dict[str, Any]) -> None:
    findings = next(e for e in english["entry"] if e["resource"]["resourceType"] == "Observation")
    extra = json.loads(json.dumps(findings))
    extra["fullUrl"] = "urn:uuid:00000000-0000-4000-8000-000000000028"
    extra["resource"]["id"] = extra["fullUrl"][9:]
    extra["resource"]["valueString"] = "Small left pleural effusion."
    english["entry"].append(extra)
    report_of(english)["result"].append({"reference": extra["fullUrl"]})


def test_english_findings_the_report_cannot_carry_are_refused(variants: ReportVariants) -> None:
    # The English report has two findings texts, the Chinese one a single findings
    # Observation: the second (a pleural effusion) would silently not be shown.
    english = english_bundle()
    _second_finding(english)
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha_bundle()), "zh-Hant-HK+en", _bytes(english))
    error = caught.value
    assert error.code == "mapping.translation-findings"
    assert error.expression == "DiagnosticReport.result"
    assert "NSR2026061701" in error.issue.message and "HKR-2026-0617-01" in error.issue.message


def test_english_findings_of_a_report_without_findings_are_refused(
    variants: ReportVariants,
) -> None:
    chinese = nansha_bundle()
    del report_of(chinese)["result"]
    chinese["entry"] = [
        e for e in chinese["entry"] if e["resource"]["resourceType"] != "Observation"
    ]
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(chinese), "bilingual", _bytes(english_bundle()))
    assert caught.value.code == "mapping.translation-findings"
