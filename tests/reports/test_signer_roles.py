"""The role a signed report gives each radiologist states an institution only when it is
known: "of the performing hospital" needs both the radiologist's institution and the
performing one. A radiologist named only by display, a Practitioner with no role, the
English radiologist carried by name, or a report naming no performer gets the neutral
label (报告医师 / 放射科醫生 / Radiologist)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from gateway.reports import ReportVariants

from .conftest import english_bundle, laian_bundle, nansha_bundle, report_of

NSCH_MRN = "https://fhir.nsch.example.cn/sid/mrn"
# Every wording that says which hospital a radiologist belongs to, in every language.
INSTITUTION_ROLES = (
    "报告医师（检查机构）",
    "专家医师（报告机构）",
    "放射科醫生（檢查機構）",
    "專家醫生（報告機構）",
    "performing hospital",
    "reporting hospital",
)


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _paragraphs(page: bytes, lang: str) -> list[str]:
    """The text of every paragraph of the page's columns in ``lang``."""
    text = page.decode("utf-8")
    columns = re.findall(rf'<div class="col" lang="{lang}">(.*?)</div>(?=</div>|<div)', text, re.S)
    return [html.unescape(p) for col in columns for p in re.findall(r"<p>(.*?)</p>", col)]


def _bare_nansha() -> dict[str, Any]:
    """The Nansha report as a lone DiagnosticReport: 何慧敏 named by display only."""
    bare = {k: v for k, v in report_of(nansha_bundle()).items() if k != "result"}
    bare["subject"] = {"identifier": {"system": NSCH_MRN, "value": "0098765"}}
    bare["performer"] = [{"display": "广州市第一人民医院南沙医院", "type": "Organization"}]
    bare["resultsInterpreter"] = [{"display": "何慧敏", "type": "PractitionerRole"}]
    return bare


def test_radiologists_named_only_by_display_are_given_no_institution(
    variants: ReportVariants,
) -> None:
    # The English report's entries cannot be copied beside a lone DiagnosticReport: its
    # radiologist is carried by name, and no institution is known for either of them.
    english = english_bundle()
    del report_of(english)["result"]
    variant = variants.variant(_bytes(_bare_nansha()), "zh-Hant-HK+en", _bytes(english))
    hk, en = _paragraphs(variant.html, "zh-Hant-HK"), _paragraphs(variant.html, "en")
    assert "放射科醫生：何慧敏" in hk and "職責：放射科醫生" in hk
    assert "Radiologist: CHAN Chi Ming" in en and "Role: Radiologist" in en
    assert "Institution: —" in en
    page = variant.html.decode("utf-8")
    assert not any(role in page for role in INSTITUTION_ROLES)


def test_a_practitioner_without_a_role_is_given_no_institution(
    variants: ReportVariants,
) -> None:
    # 徐静 referenced as a Practitioner: which hospital she reads for is not said.
    laian = laian_bundle()
    report_of(laian)["resultsInterpreter"] = [
        {"reference": "urn:uuid:00000000-0000-4000-8000-000000000004"}
    ]
    paragraphs = _paragraphs(variants.variant(_bytes(laian), "zh-Hans").html, "zh-Hans")
    assert "报告医师：徐静" in paragraphs and "职责：报告医师" in paragraphs
    assert "机构：—" in paragraphs
    assert not any(role in p for p in paragraphs for role in INSTITUTION_ROLES)


def test_without_a_performer_no_radiologist_is_of_the_performing_hospital(
    variants: ReportVariants,
) -> None:
    # 徐静's institution is known, the performing one is not: her institution is shown,
    # but she is not said to be of the performing hospital, nor an outside expert.
    laian = laian_bundle()
    del report_of(laian)["performer"]
    paragraphs = _paragraphs(variants.variant(_bytes(laian), "zh-Hans").html, "zh-Hans")
    assert "报告医师：徐静（南京医科大学第二附属医院）" in paragraphs
    assert "职责：报告医师" in paragraphs and "机构：南京医科大学第二附属医院" in paragraphs
    assert not any(role in p for p in paragraphs for role in INSTITUTION_ROLES)


@pytest.mark.parametrize(
    ("lang", "expected"),
    [
        ("zh-Hans", "专家医师（报告机构）：徐静（南京医科大学第二附属医院）"),
        ("zh-Hant-HK", "專家醫生（報告機構）：徐静（南京醫科大學第二附屬醫院）"),
    ],
)
def test_a_radiologist_of_a_known_other_institution_keeps_the_expert_label(
    variants: ReportVariants, lang: str, expected: str
) -> None:
    paragraphs = _paragraphs(variants.variant(_bytes(laian_bundle()), lang).html, lang)
    assert expected in paragraphs


def test_radiologists_of_known_institutions_keep_their_labels_beside_the_english_one(
    variants: ReportVariants,
) -> None:
    variant = variants.variant(_bytes(nansha_bundle()), "zh-Hant-HK+en", _bytes(english_bundle()))
    hk, en = _paragraphs(variant.html, "zh-Hant-HK"), _paragraphs(variant.html, "en")
    assert "放射科醫生（檢查機構）：何慧敏（廣州市第一人民醫院南沙醫院）" in hk
    partner = "Greater Bay Area Medical Group Hong Kong Partner Medical Centre"
    assert f"Expert radiologist, reporting hospital: CHAN Chi Ming ({partner})" in en


def _role_organization(bundle: dict[str, Any], organization: dict[str, Any]) -> None:
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    role = bundle["entry"][kinds.index("PractitionerRole")]["resource"]
    role["organization"] = organization


def test_a_radiologist_of_the_performing_hospital_named_by_display_is_not_an_expert(
    variants: ReportVariants,
) -> None:
    # 徐静's role names 来安县第二人民医院, the performing hospital, by display only: she
    # is not an outside expert of a "reporting hospital" that is the performing one.
    laian = laian_bundle()
    _role_organization(laian, {"display": "来安县第二人民医院"})
    paragraphs = _paragraphs(variants.variant(_bytes(laian), "zh-Hans").html, "zh-Hans")
    assert not any("专家医师" in p for p in paragraphs)
    assert "报告医师（检查机构）：徐静（来安县第二人民医院）" in paragraphs


def test_an_institution_named_only_by_display_is_not_said_to_be_another_one(
    variants: ReportVariants,
) -> None:
    # A name alone identifies no institution ("南京医大二附院" may be any hospital's
    # spelling of one): 徐静 is shown with it, under the neutral label.
    laian = laian_bundle()
    _role_organization(laian, {"display": "南京医大二附院"})
    paragraphs = _paragraphs(variants.variant(_bytes(laian), "zh-Hans").html, "zh-Hans")
    assert "报告医师：徐静（南京医大二附院）" in paragraphs
    assert not any(role in p for p in paragraphs for role in INSTITUTION_ROLES)
