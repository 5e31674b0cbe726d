"""People's names are never script-converted (OpenCC) in any report variant, whatever
carries them: a Patient or Practitioner resource, its own narrative, a reference's
display of unknown type, or clinical free text that quotes the name (conclusion,
findings, a report's narrative, an annotation). Coded displays and the rest of the
free text are still converted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.reports import ReportVariants
from tests.reports.conftest import nansha_bundle, report_of, resource_of

TRADITIONAL, SIMPLIFIED = "許嘉瑋", "许嘉玮"  # one name, as the ID card and as OpenCC
DOCTOR_T, DOCTOR_S = "鍾偉業", "钟伟业"
PATIENT = "urn:uuid:00000000-0000-4000-8000-000000000013"
DOCTOR = "urn:uuid:00000000-0000-4000-8000-000000000014"
FINDINGS = "urn:uuid:00000000-0000-4000-8000-000000000016"
XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
CHINESE = ("zh-Hans", "zh-Hant-HK", "bilingual")


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _everything(variants: ReportVariants, report: dict[str, Any], lang: str) -> str:
    """The variant's JSON and HTML, as one text to search."""
    variant = variants.variant(_bytes(report), lang)
    return json.dumps(variant.resource, ensure_ascii=False) + variant.html.decode("utf-8")


def _traditional_source() -> dict[str, Any]:
    """The Nansha report written in Hong Kong Traditional, its patient 許嘉瑋."""
    bundle = nansha_bundle()
    report_of(bundle)["language"] = "zh-Hant-HK"
    patient = resource_of(bundle, PATIENT)
    patient["name"][0] |= {"text": TRADITIONAL, "family": "許", "given": ["嘉瑋"]}
    return bundle


def _lone(subject: dict[str, Any]) -> dict[str, Any]:
    """The report alone (no Bundle), in Traditional, naming its patient by ``subject``."""
    report = report_of(nansha_bundle())
    lone = {k: v for k, v in report.items() if k not in ("result", "resultsInterpreter")}
    performer = [{"display": "南沙中心医院"}]
    return lone | {"language": "zh-Hant-HK", "subject": subject, "performer": performer}


@pytest.mark.parametrize(
    "subject",
    [
        {"display": TRADITIONAL},
        {"reference": "Patient/p1", "display": TRADITIONAL},
        {"reference": "https://fhir.example.hk/R4/Patient/p1/_history/2", "display": TRADITIONAL},
        {
            "identifier": {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0098765"},
            "display": TRADITIONAL,
        },
    ],
    ids=["display-only", "relative", "absolute-versioned", "logical"],
)
def test_a_subject_display_is_never_converted(
    variants: ReportVariants, subject: dict[str, Any]
) -> None:
    out = _everything(variants, _lone(subject), "zh-Hans")
    assert TRADITIONAL in out and SIMPLIFIED not in out
    assert "南沙医院" in out  # the institution's display is still its zh-Hans name


@pytest.mark.parametrize("lang", CHINESE)
def test_a_patient_narrative_of_the_sender_keeps_the_name(
    variants: ReportVariants, lang: str
) -> None:
    bundle = _traditional_source()
    resource_of(bundle, PATIENT)["text"] = {
        "status": "additional",
        "div": f"<div {XHTML}><p>{TRADITIONAL}（男，1957年）</p></div>",
    }
    out = _everything(variants, bundle, lang)
    assert SIMPLIFIED not in out


@pytest.mark.parametrize("lang", CHINESE)
def test_free_text_quoting_names_keeps_them_and_converts_the_rest(
    variants: ReportVariants, lang: str
) -> None:
    bundle = _traditional_source()
    resource_of(bundle, DOCTOR)["name"] = [{"text": DOCTOR_T, "family": "鍾", "given": ["偉業"]}]
    report = report_of(bundle)
    report["conclusion"] = f"患者{TRADITIONAL}右肺上葉磨玻璃結節，已告知{DOCTOR_T}醫生。"
    report["text"] = {
        "status": "additional",
        "div": f"<div {XHTML}><p>{TRADITIONAL} 胸部CT：右肺結節。</p></div>",
    }
    finding = resource_of(bundle, FINDINGS)
    finding["valueString"] = f"{TRADITIONAL}（嘉瑋）右肺上葉見磨玻璃結節。"
    finding["note"] = [{"text": f"與{DOCTOR_T}討論"}]
    out = _everything(variants, bundle, lang)
    assert SIMPLIFIED not in out and DOCTOR_S not in out
    assert "嘉玮" not in out  # the given name alone is a name too
    if lang == "zh-Hans":  # the clinical text around the names is converted
        variant = variants.variant(_bytes(bundle), lang)
        conclusion = variant.resource["entry"][-1]["resource"]["conclusion"]
        assert conclusion == f"患者{TRADITIONAL}右肺上叶磨玻璃结节，已告知{DOCTOR_T}医生。"


def test_a_name_in_simplified_stays_simplified_in_the_traditional_variant(
    variants: ReportVariants,
) -> None:
    bundle = nansha_bundle()  # written in zh-Hans, the patient 许嘉玮 as registered
    report_of(bundle)["conclusion"] = f"{SIMPLIFIED}：右肺上叶磨玻璃结节。"
    variant = variants.variant(_bytes(bundle), "zh-Hant-HK")
    conclusion = report_of(variant.resource)["conclusion"]
    assert conclusion == f"{SIMPLIFIED}：右肺上葉磨玻璃結節。"
    assert TRADITIONAL not in json.dumps(variant.resource, ensure_ascii=False)
    assert TRADITIONAL not in variant.html.decode("utf-8")


# -- the seed file's Latin names go to the person they belong to, by identifier -----------
def _patient_named(identifier: dict[str, str], name: dict[str, Any]) -> dict[str, Any]:
    bundle = nansha_bundle()
    patient = resource_of(bundle, PATIENT)
    patient["identifier"], patient["name"] = [identifier], [name]
    return bundle


def _patient_names(variants: ReportVariants, bundle: dict[str, Any], lang: str) -> list[Any]:
    out = variants.variant(_bytes(bundle), lang).resource
    [patient] = [e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient"]
    return list(patient["name"])


@pytest.mark.parametrize("lang", ["en", "bilingual"])
def test_a_patient_whose_mrn_is_a_staff_number_gets_no_doctors_name(
    variants: ReportVariants, lang: str
) -> None:
    # NS0231 is 梁志东's staff number at Nansha (seeds): as an MRN it names a patient.
    mrn = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "NS0231"}
    name = {"text": SIMPLIFIED, "family": "许", "given": ["嘉玮"]}
    assert _patient_names(variants, _patient_named(mrn, name), lang) == [name]


def test_a_namesake_with_another_mrn_gets_no_seed_name(variants: ReportVariants) -> None:
    # 许嘉玮 is the seed file's HUI KA WAI at MRN 0098765; this one is MRN 0098766.
    mrn = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0098766"}
    name = {"text": SIMPLIFIED, "family": "许", "given": ["嘉玮"]}
    assert _patient_names(variants, _patient_named(mrn, name), "en") == [name]
