"""Language variants of a DiagnosticReport: what a partner receiving one would check."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.errors import IntakeError, MappingError
from gateway.reports import ReportVariants
from gateway.validation import check_bundle, validate_resource

from .conftest import (
    ENGLISH_CONCLUSION,
    ENGLISH_FINDINGS,
    LAIAN_CONCLUSION,
    NANSHA_CONCLUSION,
    TRANSLATION,
    english_bundle,
    laian_bundle,
    nansha_bundle,
    report_of,
    resource_of,
)

PENDING = "https://fhir-gateway.example.org/StructureDefinition/translation-pending"


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _translations(element: dict[str, Any] | None) -> dict[str, str]:
    out = {}
    for ext in (element or {}).get("extension", []):
        if ext["url"] == TRANSLATION:
            parts = {e["url"]: e for e in ext["extension"]}
            out[parts["lang"]["valueCode"]] = parts["content"]["valueString"]
    return out


def _findings(bundle: dict[str, Any]) -> dict[str, Any]:
    report = report_of(bundle)
    return resource_of(bundle, report["result"][0]["reference"])


def _coding(report: dict[str, Any], code: str) -> dict[str, Any]:
    return next(c for c in report["code"]["coding"] if c["code"] == code)


def test_zh_hant_hk_converts_findings_conclusion_and_displays(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    out = variants.variant(_bytes(laian), "zh-Hant-HK").resource
    report = report_of(out)
    assert report["language"] == "zh-Hant-HK"
    assert report["conclusion"] == "右側基底節區腔隙性腦梗死，建議隨訪複查。"
    assert _findings(out)["valueString"].startswith("右側基底節區見斑片狀低密度影，邊界欠清")
    # LOINC display from the terminology's zh-HK designation; the local code by OpenCC.
    assert _coding(report, "30799-1")["display"] == "頭顱CT平掃"
    assert _coding(report, "CT001")["display"] == "頭顱CT平掃"
    # Institutions: the network's Traditional names; people: as their ID card says
    # (OpenCC made 王伟 into 王偉).
    assert resource_of(out, report["performer"][0]["reference"])["name"] == "來安縣第二人民醫院"
    patient = resource_of(out, report["subject"]["reference"])
    assert patient["name"][0]["text"] == "王伟"


def test_zh_hans_is_as_received(variants: ReportVariants, laian: dict[str, Any]) -> None:
    out = variants.variant(_bytes(laian), "zh-Hans").resource
    report = report_of(out)
    assert report["conclusion"] == LAIAN_CONCLUSION
    assert _coding(report, "CT001")["display"] == "头颅CT平扫"
    assert resource_of(out, report["subject"]["reference"])["name"][0]["text"] == "王伟"


def test_english_displays_come_from_the_terminology(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    out = variants.variant(_bytes(laian), "en").resource
    report = report_of(out)
    assert report["language"] == "en"
    assert _coding(report, "30799-1")["display"] == "CT Head WO contrast"
    assert _translations(_coding(report, "30799-1")["_display"])["zh-Hant-HK"] == "頭顱CT平掃"
    org = resource_of(out, report["performer"][0]["reference"])
    assert org["name"] == "Lai'an County No.2 People's Hospital"


def test_english_without_english_report_is_pending_and_has_no_chinese_narrative(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    variant = variants.variant(_bytes(laian), "en")
    report = report_of(variant.resource)
    assert variant.pending and variant.notes
    assert {"url": PENDING, "valueCode": "en"} in report["extension"]
    assert "conclusion" not in report  # never machine-translated
    findings = _findings(variant.resource)
    assert "valueString" not in findings
    assert findings["dataAbsentReason"]["coding"][0]["code"] == "temp-unknown"
    assert "English report pending" in variant.html.decode()


def test_english_narrative_comes_from_the_linked_english_report(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    variant = variants.variant(_bytes(nansha), "en", _bytes(english))
    report = report_of(variant.resource)
    assert not variant.pending
    assert report["conclusion"] == ENGLISH_CONCLUSION
    assert _findings(variant.resource)["valueString"] == ENGLISH_FINDINGS
    assert not any(e["url"] == PENDING for e in report.get("extension", []))


def test_bilingual_carries_all_three_languages(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    out = variants.variant(_bytes(nansha), "bilingual", _bytes(english)).resource
    report = report_of(out)
    assert report["language"] == "zh-Hans"
    assert report["conclusion"] == NANSHA_CONCLUSION
    conclusion = _translations(report["_conclusion"])
    assert conclusion == {
        "zh-Hant-HK": "右肺上葉磨玻璃結節，建議3個月後複查胸部CT。",
        "en": ENGLISH_CONCLUSION,
    }
    findings = _translations(_findings(out)["_valueString"])
    assert set(findings) == {"zh-Hant-HK", "en"} and findings["en"] == ENGLISH_FINDINGS
    display = _translations(_coding(report, "29252-4")["_display"])
    assert display["zh-Hant-HK"] == "胸部CT平掃"
    assert _coding(report, "29252-4")["display"] == "胸部CT平扫"
    forms = [(f["language"], f["contentType"]) for f in report["presentedForm"]]
    assert forms == [
        (lang, kind)
        for lang in ("zh-Hans", "zh-Hant-HK", "en")
        for kind in ("text/html", "application/pdf")
    ]
    for form in report["presentedForm"]:
        assert form["title"]
        data = base64.b64decode(form["data"], validate=True)
        assert data.startswith(b"%PDF" if form["contentType"] == "application/pdf" else b"<!")
    # The Hong Kong radiologist signs beside the Nansha one, his institution comes along.
    assert len(report["resultsInterpreter"]) == 2
    orgs = [e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Organization"]
    hk = next(o for o in orgs if o["name"] == "大湾区医疗集团香港合作医疗中心")
    assert _translations(hk["_name"])["en"] == (
        "Greater Bay Area Medical Group Hong Kong Partner Medical Centre"
    )


def test_bilingual_without_english_report_is_pending(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    variant = variants.variant(_bytes(laian), "bilingual")
    report = report_of(variant.resource)
    assert variant.pending
    assert {"url": PENDING, "valueCode": "en"} in report["extension"]
    assert "en" not in _translations(report["_conclusion"])
    assert "zh-Hant-HK" in _translations(report["_conclusion"])


def test_wrong_translation_of_identifier_is_refused(
    variants: ReportVariants, nansha: dict[str, Any]
) -> None:
    wrong = english_bundle({"system": "https://fhir.nsch.example.cn/sid/report", "value": "X1"})
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha), "bilingual", _bytes(wrong))
    message = str(caught.value)
    assert caught.value.code == "mapping.translation-of-mismatch"
    assert "https://fhir.nsch.example.cn/sid/report|X1" in message
    assert "https://fhir.nsch.example.cn/sid/report|NSR2026061701" in message


@pytest.mark.parametrize(
    "link",
    [
        {"value": "NSR2026061701"},  # the number alone: any institution's report 1
        {"system": "https://fhir.nsch.example.cn/sid/report/", "value": "NSR2026061701"},
        {"system": "https://fhir.nsch.example.cn/sid/report", "value": "nsr2026061701"},
        {"system": "https://fhir.nsch.example.cn/sid/report", "value": "ＮＳＲ2026061701"},
    ],
)
def test_a_link_that_is_not_exactly_the_reports_identifier_is_refused(
    variants: ReportVariants, link: dict[str, str]
) -> None:
    # The report also carries its number without a system (as some senders add it): a
    # value alone names no report, so it links nothing.
    nansha = nansha_bundle()
    report_of(nansha)["identifier"].append({"value": "NSR2026061701"})
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha), "bilingual", _bytes(english_bundle(link)))
    assert caught.value.code == "mapping.translation-of-mismatch"


def test_english_report_must_be_english(variants: ReportVariants, nansha: dict[str, Any]) -> None:
    with pytest.raises(MappingError, match="not 'en'"):
        variants.variant(_bytes(nansha), "bilingual", _bytes(nansha))


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "intake.report-json"),
        (b'{"resourceType": "Patient"}', "intake.report-shape"),
        (b'{"resourceType": "Bundle", "entry": []}', "intake.report-shape"),
        # not FHIR in shape: these raised AttributeError inside the variant code (fuzzing)
        (b'{"resourceType": "DiagnosticReport", "language": 5}', "intake.report-invalid"),
        (b'{"resourceType": "DiagnosticReport", "language": {}}', "intake.report-invalid"),
        (
            b'{"resourceType": "Bundle", "type": "collection", "entry": [[1], '
            b'{"resource": {"resourceType": "DiagnosticReport", "status": "final", '
            b'"code": {"text": "CT"}}}]}',
            "intake.report-invalid",
        ),
    ],
)
def test_bad_input_is_a_gateway_error(variants: ReportVariants, data: bytes, code: str) -> None:
    with pytest.raises(IntakeError) as caught:
        variants.variant(data, "zh-Hant-HK")
    assert caught.value.code == code


def test_unknown_language_is_refused(variants: ReportVariants, laian: dict[str, Any]) -> None:
    with pytest.raises(MappingError, match="unknown report language"):
        variants.variant(_bytes(laian), "fr")


def test_input_is_not_modified(variants: ReportVariants, laian: dict[str, Any]) -> None:
    before = json.dumps(laian, sort_keys=True)
    variants.variant(laian, "bilingual")
    assert json.dumps(laian, sort_keys=True) == before


@pytest.mark.parametrize("lang", ["zh-Hans", "zh-Hant-HK", "en", "bilingual"])
def test_every_variant_is_valid_fhir(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any], lang: str
) -> None:
    out = variants.variant(_bytes(nansha), lang, _bytes(english)).resource
    assert check_bundle(out) == []


def test_bare_report_uses_reference_displays(variants: ReportVariants) -> None:
    report = report_of(english_bundle())  # any report; made bare and Chinese here
    bare = {
        k: v for k, v in report.items() if k not in ("extension", "result", "resultsInterpreter")
    }
    bare |= {
        "language": "zh-Hans",
        "conclusion": "右肺上叶磨玻璃结节。",
        "subject": {"display": "许嘉玮"},
        "performer": [{"display": "南沙中心医院"}],
    }
    variant = variants.variant(bare, "zh-Hant-HK")
    out = variant.resource
    assert out["performer"][0]["display"] == "廣州市第一人民醫院南沙醫院"
    assert out["conclusion"] == "右肺上葉磨玻璃結節。"
    assert validate_resource(out) == []
    # The subject's display is the patient's name: never script-converted (as written)
    assert out["subject"]["display"] == "许嘉玮"
    assert "许嘉玮" in variant.html.decode() and "許嘉瑋" not in variant.html.decode()


def test_output_is_byte_identical_on_rerun(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    first = variants.variant(_bytes(nansha), "bilingual", _bytes(english))
    again = variants.variant(_bytes(nansha), "bilingual", _bytes(english))
    assert json.dumps(first.resource) == json.dumps(again.resource)
    assert first.pdf == again.pdf and first.html == again.html


def test_a_malformed_english_report_is_a_gateway_error(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    report_of(english)["result"] = "not a list"
    with pytest.raises(IntakeError) as caught:
        variants.variant(_bytes(nansha), "bilingual", _bytes(english))
    assert caught.value.code == "intake.report-invalid"
    assert "English report" in caught.value.issue.message


def _with_unknown_type(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][2]["resource"]["resourceType"] = "Foo"
    return bundle


@pytest.mark.parametrize(
    ("report", "english", "location"),
    [
        # each raised ValueError from get_fhir_model_class (issue 8)
        (lambda: _with_unknown_type(nansha_bundle()), None, "Bundle.entry[2].resource"),
        (nansha_bundle, lambda: _with_unknown_type(english_bundle()), "Bundle.entry[2].resource"),
        (
            lambda: {**report_of(nansha_bundle()), "contained": [{"resourceType": "Foo"}]},
            None,
            "DiagnosticReport.contained[0]",
        ),
        (
            lambda: {**report_of(nansha_bundle()), "contained": [{"id": "p"}]},
            None,
            "DiagnosticReport.contained[0]",
        ),
        (
            lambda: {
                **report_of(nansha_bundle()),
                "contained": [{"resourceType": "Patient", "contained": [{"resourceType": 5}]}],
            },
            None,
            "DiagnosticReport.contained[0].contained[0]",
        ),
        (  # a data type is no resource
            lambda: {**report_of(nansha_bundle()), "contained": [{"resourceType": "HumanName"}]},
            None,
            "DiagnosticReport.contained[0]",
        ),
    ],
)
def test_an_unknown_resource_type_is_an_intake_error_naming_where(
    variants: ReportVariants,
    report: Callable[[], dict[str, Any]],
    english: Callable[[], dict[str, Any]] | None,
    location: str,
) -> None:
    with pytest.raises(IntakeError) as caught:
        variants.variant(_bytes(report()), "bilingual", _bytes(english()) if english else None)
    assert caught.value.code == "intake.report-resource-type"
    assert caught.value.expression == f"{location}.resourceType"
    assert ("English report" in caught.value.issue.message) is (english is not None)


@pytest.mark.parametrize(
    ("change", "location"),
    [
        # an entry whose resource is not an object was carried into the variant as it was
        (lambda b: b["entry"].append({"resource": 5}), "Bundle.entry[7].resource"),
        (lambda b: b["entry"].append("x"), "Bundle.entry[7]"),
        (lambda b: b.update(entry={"a": 1}), "Bundle.entry"),
        (lambda b: report_of(b).update(contained=["x"]), "Bundle.entry[6].resource.contained[0]"),
        (lambda b: report_of(b).update(contained={}), "Bundle.entry[6].resource.contained"),
    ],
)
def test_entries_and_contained_resources_must_be_objects(
    variants: ReportVariants, change: Callable[[dict[str, Any]], None], location: str
) -> None:
    bundle = laian_bundle()
    change(bundle)
    with pytest.raises(IntakeError) as caught:
        variants.variant(_bytes(bundle), "zh-Hant-HK")
    assert caught.value.code == "intake.report-invalid"
    assert caught.value.expression == location
