"""End to end: the imaging story's reports, converted from the sample ORUs, made into
the variants a partner asks for, rendered, and read back from the PDF."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.errors import ConfigError, IntakeError
from gateway.reports import ReportVariants

IMAGING = Path(__file__).resolve().parents[2] / "examples" / "imaging"
PDFTOTEXT = shutil.which("pdftotext")
PENDING = "https://fhir-gateway.example.org/StructureDefinition/translation-pending"


def _bundle_json(converter: Converter, name: str) -> bytes:
    [record] = converter.convert((IMAGING / name).read_bytes(), source=name)
    assert record.ok and record.bundle_json is not None, [i.line() for i in record.errors]
    return record.bundle_json


def _report(resource: dict[str, Any]) -> dict[str, Any]:
    [report] = [
        e["resource"]
        for e in resource["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    return report


def _text(pdf: bytes, tmp_path: Path) -> str:
    if PDFTOTEXT is None:
        pytest.skip("pdftotext (poppler-utils) is not installed: cannot read the PDF back")
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf)
    done = subprocess.run([PDFTOTEXT, str(path), "-"], capture_output=True, check=True)
    return " ".join(done.stdout.decode("utf-8").split())


@pytest.fixture(scope="module")
def variants(settings: Settings) -> ReportVariants:
    return ReportVariants(settings)


def test_bilingual_nansha_report_carries_three_languages_and_reads_back(
    converter: Converter, variants: ReportVariants, tmp_path: Path
) -> None:
    chinese = _bundle_json(converter, "oru_r01_nsch_cta_zh.hl7")
    english = _bundle_json(converter, "oru_r01_hkpmc_cta_en.hl7")
    variant = variants.variant(chinese, "bilingual", english)
    assert not variant.pending
    report = _report(variant.resource)  # type: ignore[arg-type]
    assert report["language"] == "zh-Hans"
    assert report["conclusion"].startswith("左前降支近段混合斑块")
    translated = {
        sub["valueCode"]: next(s["valueString"] for s in ext["extension"] if s["url"] == "content")
        for ext in report["_conclusion"]["extension"]
        for sub in ext["extension"]
        if sub["url"] == "lang"
    }
    assert translated["zh-Hant-HK"].startswith("左前降支近段混合斑塊")  # s2hk, not MT
    assert translated["en"].startswith("Moderate (50-60%) stenosis")  # the partner's words
    assert {f["language"] for f in report["presentedForm"]} == {"zh-Hans", "zh-Hant-HK", "en"}

    text = _text(variant.pdf, tmp_path)
    for expected in (
        "广州市第一人民医院南沙医院",  # where the exam was done
        "Greater Bay Area Medical Group Hong Kong Partner Medical Centre",  # who reported
        "冠状动脉呈右优势型",  # Chinese findings
        "Right-dominant coronary circulation",  # English findings
        "許嘉瑋",
    ):
        assert expected in text, f"{expected!r} not in the PDF text"


def test_co_branded_lai_an_report_names_both_institutions(
    converter: Converter, variants: ReportVariants, tmp_path: Path
) -> None:
    report = _bundle_json(converter, "oru_r01_lax2_ct_cobranded.hl7")
    variant = variants.variant(report, "zh-Hans")
    text = _text(variant.pdf, tmp_path)
    assert "来安县第二人民医院" in text  # exam performed here
    assert "南京医科大学第二附属医院" in text  # the expert's institution, which signs
    assert "徐静" in text
    assert "左侧基底节区陈旧性腔隙性脑梗死" in text


def test_english_variant_without_the_partners_report_is_pending(
    converter: Converter, variants: ReportVariants
) -> None:
    chinese = _bundle_json(converter, "oru_r01_nsch_cta_zh.hl7")
    variant = variants.variant(chinese, "en")
    assert variant.pending
    report = _report(variant.resource)  # type: ignore[arg-type]
    # No English narrative is made up: the conclusion is absent and marked pending.
    assert report["language"] == "en" and "conclusion" not in report
    assert {"url": PENDING, "valueCode": "en"} in report["extension"]


def test_characters_the_pdf_font_lacks_are_reported_not_silently_dropped(
    converter: Converter, variants: ReportVariants
) -> None:
    bundle = orjson.loads(_bundle_json(converter, "oru_r01_nsch_cta_zh.hl7"))
    report = _report(bundle)
    report["conclusion"] += "（𪚥）"  # U+2A6A5: beyond Noto Sans CJK SC
    variant = variants.variant(orjson.dumps(bundle), "zh-Hans")
    [note] = [n for n in variant.notes if "no glyph" in n]
    assert note.startswith("1 character(s)") and "𪚥" not in note
    assert "𪚥" in _report(variant.resource)["conclusion"]  # type: ignore[arg-type]


def test_a_report_too_long_to_render_is_refused_quickly(
    converter: Converter, variants: ReportVariants
) -> None:
    bundle = orjson.loads(_bundle_json(converter, "oru_r01_nsch_cta_zh.hl7"))
    _report(bundle)["conclusion"] = "狭窄" * 40_000
    with pytest.raises(IntakeError) as caught:
        variants.variant(orjson.dumps(bundle), "bilingual")
    assert caught.value.issue.code == "intake.report-too-long"


@pytest.mark.parametrize(
    ("partner", "expected"),
    [
        ("HKPMC", "zh-Hant-HK+en"),  # Hong Kong Traditional beside English
        ("NSGP", "zh-Hans+zh-Hant-HK+en"),  # all three
        ("南京医科大学第二附属医院", "zh-Hans"),
    ],
)
def test_a_partner_gets_the_variant_it_prefers(
    variants: ReportVariants, partner: str, expected: str
) -> None:
    assert variants.preferred(partner) == expected


def test_an_unknown_partner_is_a_clear_error(variants: ReportVariants) -> None:
    with pytest.raises(ConfigError, match="not an institution of the network"):
        variants.preferred("NOWHERE")
