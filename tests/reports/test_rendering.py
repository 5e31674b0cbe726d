"""Rendered reports: PDF fonts embedded, text readable back, HTML escaped; CLI and API."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from gateway import Settings
from gateway.errors import IntakeError
from gateway.reports import ReportVariants, add_cli, variant_response

from .conftest import report_of, resource_of

PDFTOTEXT = shutil.which("pdftotext")


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _text(pdf: bytes) -> str:
    if PDFTOTEXT is None:
        pytest.skip("pdftotext (poppler-utils) is not installed: cannot read the PDF back")
    done = subprocess.run(
        [PDFTOTEXT, "-enc", "UTF-8", "-", "-"], input=pdf, capture_output=True, check=True
    )
    return " ".join(done.stdout.decode("utf-8").split())


def _embedded_fonts(pdf: bytes) -> list[str]:
    found = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        fonts = page["/Resources"]["/Font"]
        for ref in fonts.values():
            font = ref.get_object()
            for descendant in font.get("/DescendantFonts", [font]):
                desc = descendant.get_object()["/FontDescriptor"].get_object()
                found += [k for k in ("/FontFile", "/FontFile2", "/FontFile3") if k in desc]
    return found


def test_bilingual_pdf_embeds_its_font_and_shows_both_institutions_and_languages(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    pdf = variants.variant(_bytes(nansha), "bilingual", _bytes(english)).pdf
    assert _embedded_fonts(pdf)  # FontFile3 (CFF) for Noto Sans CJK
    text = _text(pdf)
    assert "广州市第一人民医院南沙医院" in text  # where the exam was done
    assert "Greater Bay Area Medical Group Hong Kong Partner Medical Centre" in text
    assert "右肺上叶见一磨玻璃结节" in text  # Chinese findings
    assert "ground-glass nodule" in text  # English findings
    assert "检查报告" in text and "Imaging Report" in text
    assert "许嘉玮" in text and "HUI KA WAI" in text


def test_co_branded_pdf_names_both_institutions(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    text = _text(variants.variant(_bytes(laian), "zh-Hant-HK").pdf)
    assert "來安縣第二人民醫院" in text and "南京醫科大學第二附屬醫院" in text
    assert "徐静" in text and "徐靜" not in text  # the Nanjing expert signs, by her own name
    assert "影像所見" in text and "右側基底節區" in text


def test_pending_english_is_said_in_the_pdf(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    text = _text(variants.variant(_bytes(laian), "bilingual").pdf)
    assert "English report pending" in text
    assert "Not yet reported (the English report is pending)" in text  # not "Reported by" her


def test_html_escapes_report_data(variants: ReportVariants, laian: dict[str, Any]) -> None:
    report = report_of(laian)
    findings = resource_of(laian, report["result"][0]["reference"])
    findings["valueString"] = "<script>alert('x')</script>右侧基底节区低密度影"
    html = variants.variant(_bytes(laian), "zh-Hans").html.decode()
    assert "<script>" not in html
    assert "&lt;script&gt;" in html


def test_long_findings_and_details_flow_over_pages(
    variants: ReportVariants, laian: dict[str, Any]
) -> None:
    # fpdf2 cannot split a table row over pages: a findings text or a patient detail
    # taller than a page raised ValueError ('row ... too high') (found by fuzzing).
    report = report_of(laian)
    findings = resource_of(laian, report["result"][0]["reference"])
    findings["valueString"] = "右侧基底节区低密度影。" * 400 + "\n" * 80 + "末段。"
    report["conclusion"] = "x" * 20_000
    patient = resource_of(laian, report["subject"]["reference"])
    patient["name"][0]["text"] = "王" * 5_000
    pdf = variants.variant(_bytes(laian), "bilingual").pdf
    assert len(PdfReader(io.BytesIO(pdf)).pages) > 3
    text = _text(pdf)
    assert "末段。" in text and text.count("王") >= 199  # the name, cut at 200 characters


def test_missing_glyphs_are_logged_without_the_characters(
    variants: ReportVariants, laian: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    # fpdf2 logged the characters its font lacks, quoted: here a patient's name.
    report = report_of(laian)
    patient = resource_of(laian, report["subject"]["reference"])
    patient["name"][0]["text"] = "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \U0001f600"
    with caplog.at_level(logging.WARNING):
        variants.variant(_bytes(laian), "zh-Hans")
    logged = [r.getMessage() for r in caplog.records if r.name == "fpdf.output"]
    assert logged and all("missing glyphs" in m for m in logged)
    assert not any("\u0627" in m or "\U0001f600" in m or "u0627" in m for m in logged)


def test_variant_response_for_the_api(
    settings: Settings, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    status, kind, body = variant_response(
        _bytes(nansha), "bilingual", _bytes(english), "pdf", settings=settings
    )
    assert (status, kind) == (200, "application/pdf") and body.startswith(b"%PDF")
    status, kind, body = variant_response(_bytes(nansha), "zh-HK", None, "json", settings=settings)
    assert kind == "application/fhir+json"
    assert json.loads(body)["entry"][-1]["resource"]["language"] == "zh-Hant-HK"
    with pytest.raises(IntakeError):
        variant_response(_bytes(nansha), "en", None, "docx", settings=settings)


def test_cli_writes_json_pdf_and_html(
    settings: Settings,
    nansha: dict[str, Any],
    english: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="gateway")
    add_cli(parser.add_subparsers(dest="command"))
    (tmp_path / "report.json").write_bytes(_bytes(nansha))
    (tmp_path / "en.json").write_bytes(_bytes(english))
    out = tmp_path / "out"
    args = parser.parse_args(
        [
            "report", "variants", str(tmp_path / "report.json"), "--lang", "bilingual",
            "--english", str(tmp_path / "en.json"), "--pdf", str(out / "r.pdf"),
            "--html", str(out / "r.html"), "-o", str(out / "r.json"),
        ]
    )  # fmt: skip
    assert args.func(args, settings) == 0
    assert (out / "r.pdf").read_bytes().startswith(b"%PDF")
    assert "Imaging Report" in (out / "r.html").read_text(encoding="utf-8")
    assert json.loads((out / "r.json").read_bytes())["resourceType"] == "Bundle"
    args = parser.parse_args(["report", "variants", str(tmp_path / "report.json"), "--lang", "en"])
    assert args.func(args, settings) == 0
    captured = capsys.readouterr()
    assert "pending" in captured.err
    assert json.loads(captured.out)["resourceType"] == "Bundle"
