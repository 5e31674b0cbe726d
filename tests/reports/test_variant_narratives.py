"""A variant's generated narratives are made again from its own content: names stay as
written (never script-converted), labels follow the variant's language."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.reports import ReportVariants
from tests.outputs import GOLDEN

from .conftest import laian_bundle, report_of, resource_of

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


def test_names_of_people_named_by_a_display_anywhere_stay_as_written(
    variants: ReportVariants,
) -> None:
    """The ordering doctor (ServiceRequest.requester) and a note's author, named only by a
    reference's display, are the report's people too: the conclusion and the note quote
    them as written (OpenCC made 张伟 張偉 and 林丽华 林麗華)."""
    bundle = laian_bundle()
    report = report_of(bundle)
    report["conclusion"] = "右侧基底节区腔隙性脑梗死。已电话通知开单医生张伟，由林丽华复核。"
    findings = resource_of(bundle, report["result"][0]["reference"])
    findings["note"] = [
        {
            "text": "林丽华：与前片比较无变化。",
            "authorReference": {"type": "Practitioner", "display": "林丽华"},
        }
    ]
    order = {
        "resourceType": "ServiceRequest",
        "id": "00000000-0000-4000-8000-000000000098",
        "status": "active",
        "intent": "order",
        "subject": {"reference": report["subject"]["reference"]},
        "requester": {"type": "Practitioner", "display": "张伟"},
    }
    bundle["entry"].append(
        {
            "fullUrl": f"urn:uuid:{order['id']}",
            "resource": order,
            "request": {"method": "POST", "url": "ServiceRequest"},
        }
    )
    out = ReportVariants(Settings.load(env={})).variant(orjson.dumps(bundle), "zh-Hant-HK").resource
    conclusion = report_of(out)["conclusion"]
    assert conclusion == "右側基底節區腔隙性腦梗死。已電話通知開單醫生张伟，由林丽华複核。"
    [note] = resource_of(out, report["result"][0]["reference"])["note"]
    assert note["text"] == "林丽华：與前片比較無變化。"
