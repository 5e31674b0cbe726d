"""A CDA report is converted whole: a second findings or impression section (a hospital
that splits 诊断意见 over two sections, an addendum) is carried, never dropped after
the first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter

REPO = Path(__file__).resolve().parents[3]
CDA = REPO / "examples/imaging/lax2-ct-report-cobranded.xml"
SECOND_IMPRESSION = "4. 右侧额叶小片状低密度影，建议增强MRI。"
SECOND_FINDINGS = "补充：右侧额叶见小片状低密度影，约0.5cm。"


def _section(title: str, text: str) -> str:
    return f"<component><section><title>{title}</title><text>{text}</text></section></component>"


def _converted(converter: Converter, extra: str) -> dict[str, Any]:
    text = CDA.read_text(encoding="utf-8").replace("</structuredBody>", extra + "</structuredBody>")
    [record] = converter.convert(text.encode("utf-8"))
    assert record.ok, [i.line() for i in record.issues]
    bundle: dict[str, Any] = json.loads(record.bundle_json or b"{}")
    return bundle


def _of(bundle: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind)


def test_a_second_impression_section_is_kept(converter: Converter) -> None:
    report = _of(_converted(converter, _section("诊断意见", SECOND_IMPRESSION)), "DiagnosticReport")
    assert report["conclusion"].startswith("1. 左侧基底节区陈旧性腔隙性脑梗死")
    assert report["conclusion"].endswith(SECOND_IMPRESSION)


@pytest.mark.parametrize("title", ["影像学表现", "检查所见"])
def test_a_second_findings_section_is_kept(converter: Converter, title: str) -> None:
    findings = _of(_converted(converter, _section(title, SECOND_FINDINGS)), "Observation")
    assert findings["valueString"].startswith("双侧大脑半球对称。")
    assert findings["valueString"].endswith(SECOND_FINDINGS)


def test_one_section_each_converts_as_before(converter: Converter) -> None:
    bundle = _converted(converter, "")
    assert _of(bundle, "DiagnosticReport")["conclusion"].endswith("建议必要时行头颅MRI+DWI检查。")
