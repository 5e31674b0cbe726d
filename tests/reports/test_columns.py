"""A partner's choice of columns (zh-Hant-HK + en, or all three), people's names kept
as received in every variant, and the layout's parts in the HTML."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Settings
from gateway.errors import ConfigError, MappingError
from gateway.reports import ReportVariants

from .conftest import report_of, resource_of


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("lang", ["zh-Hant-HK+en", "zh-HK+en-GB", "zh-Hant-HK en"])
def test_a_column_choice_gives_one_form_with_those_columns(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any], lang: str
) -> None:
    # "zh-Hant-HK en": a URL query decodes an unescaped '+' as a space
    variant = variants.variant(_bytes(nansha), lang, _bytes(english))
    assert variant.lang == "zh-Hant-HK+en" and not variant.pending
    report = report_of(variant.resource)  # type: ignore[arg-type]
    assert report["language"] == "zh-Hans"  # the bilingual resource, in the original's
    assert [(f["language"], f["contentType"]) for f in report["presentedForm"]] == [
        ("zh-Hant-HK", "text/html"),
        ("zh-Hant-HK", "application/pdf"),
    ]
    html = base64.b64decode(report["presentedForm"][0]["data"]).decode()
    assert html == variant.html.decode()
    assert '<div class="col" lang="zh-Hant-HK">' in html and '<div class="col" lang="en">' in html
    assert 'lang="zh-Hans"' not in html  # the Simplified column is not asked for


@pytest.mark.parametrize("lang", ["zh-Hant-HK+xx", "en+en", "zh-Hant-HK+"])
def test_a_bad_column_choice_is_refused(
    variants: ReportVariants, nansha: dict[str, Any], lang: str
) -> None:
    with pytest.raises(MappingError) as caught:
        variants.variant(_bytes(nansha), lang)
    assert caught.value.issue.code == "mapping.report-language"


def test_a_partner_preference_that_is_no_variant_is_a_config_error(tmp_path: Path) -> None:
    seeds = yaml.safe_load(
        (Path(__file__).parents[2] / "seeds" / "network.yaml").read_text(encoding="utf-8")
    )
    seeds["institutions"][0]["report_variant"] = ["zh-Hant-HK", "fr"]
    network = tmp_path / "network.yaml"
    network.write_text(yaml.safe_dump(seeds, allow_unicode=True), encoding="utf-8")
    settings = Settings.load(home=tmp_path, env={"GATEWAY_NETWORK": str(network)})
    code = seeds["institutions"][0]["facility"]
    with pytest.raises(ConfigError, match=f"institution {code}: report_variant") as caught:
        ReportVariants(settings).preferred(code)
    assert caught.value.issue.code == "config.network"


@pytest.mark.parametrize("lang", ["zh-Hant-HK", "zh-Hans+zh-Hant-HK+en", "bilingual"])
def test_people_keep_their_names_in_every_variant(
    variants: ReportVariants, laian: dict[str, Any], lang: str
) -> None:
    out = variants.variant(_bytes(laian), lang)
    bundle: Any = out.resource
    report = report_of(bundle)
    patient = resource_of(bundle, report["subject"]["reference"])
    assert patient["name"][0]["text"] == "王伟"  # OpenCC made it 王偉
    text = out.html.decode()
    assert "王伟" in text and "王偉" not in text
    assert "徐静" in text and "徐靜" not in text  # the Nanjing expert, as she signs


def test_the_html_shows_the_signing_layout(variants: ReportVariants, laian: dict[str, Any]) -> None:
    html = variants.variant(_bytes(laian), "zh-Hant-HK+en").html.decode()
    for text in (
        "檢查機構：來安縣第二人民醫院",
        "報告機構：南京醫科大學第二附屬醫院",
        "報告編號：",
    ):
        assert text in html
    assert html.count('<div class="signature">') == 1  # the Chinese report's signer
    assert "Reported by: Not yet reported (the English report is pending)" in html
    assert "@font-face" in html and "url(data:font/woff;base64," in html


def test_chinese_lines_follow_the_line_breaking_rules() -> None:
    # fpdf2 broke anywhere: '，大小約' and '），較前' started lines, '12H|U' split.
    from datetime import UTC, datetime

    from gateway.reports._pdf import _kinsoku, _new_pdf, family

    pdf = _new_pdf(datetime(2026, 6, 10, tzinfo=UTC), "zh-HK", "t", ["hk"])
    pdf.set_font(family("hk"), size=10)
    text = "左側基底節區陳舊性腔隙性腦梗死（軟化灶形成），較前片無明顯變化。CT值約12HU，" * 3
    for width in range(20, 80, 3):
        lines = _kinsoku(pdf, text, width).split("\n")
        assert "".join(lines) == text
        assert not any(line[0] in "，。）" for line in lines[1:]), lines
        assert not any(line[-1] == "（" for line in lines), lines
        assert all(pdf.get_string_width(line) <= width for line in lines)
        assert not any(line.endswith(("12", "12H")) for line in lines), lines
