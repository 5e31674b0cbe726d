"""A variant's generated narratives are made again from its own content: names stay as
written (never script-converted), labels follow the variant's language."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.reports import ReportVariants
from tests.outputs import GOLDEN

# Nansha's Chinese CT report; its patient, a Hong Kong resident, is named in Traditional.
REPORT = GOLDEN / "hl7v2" / "oru_r01_chinese.expected.json"
NAME, CONVERTED = "許嘉瑋", "许嘉玮"


@pytest.fixture(scope="module")
def variants() -> ReportVariants:
    return ReportVariants(Settings.load(env={}))


def _divs(bundle: dict[str, Any], kind: str) -> list[str]:
    return [
        str(e["resource"]["text"]["div"])
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == kind and "text" in e["resource"]
    ]


@pytest.mark.parametrize("lang", ["zh-Hans", "zh-Hant-HK", "bilingual"])
def test_names_in_a_variants_narrative_are_as_written(variants: ReportVariants, lang: str) -> None:
    out = variants.variant(REPORT.read_bytes(), lang).resource
    [div] = _divs(out, "DiagnosticReport")
    assert NAME in div and CONVERTED not in div


def test_a_traditional_variants_labels_are_traditional(variants: ReportVariants) -> None:
    source = orjson.loads(REPORT.read_bytes())
    [before] = _divs(source, "DiagnosticReport")
    [after] = _divs(
        variants.variant(REPORT.read_bytes(), "zh-Hant-HK").resource, "DiagnosticReport"
    )
    assert "诊断报告" in before and "診斷報告" in after
