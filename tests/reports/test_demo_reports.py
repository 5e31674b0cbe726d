"""Every report `make demo` renders, read back as a Hong Kong doctor and a mainland
radiologist would sign it: the PDF through poppler (pdffonts, pdftotext) and the font of
each of its text runs, the HTML in headless Chromium (no glyph drawn by a fallback font).

Beside the demo's own variants, the co-branded Lai'an report is also rendered for a
Hong Kong reader (zh-Hant-HK + en): the case where OpenCC used to turn 王伟 into 王偉.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import opencc
import pytest
from pypdf import PdfReader

from gateway import Settings
from gateway.datafiles import load_data_file
from gateway.demo import VARIANTS, run_demo
from gateway.reports import ReportVariants
from gateway.reports._webfont import web_family

PDFFONTS, PDFTOTEXT = shutil.which("pdffonts"), shutil.which("pdftotext")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
LABELS = load_data_file(Path(__file__).parents[2] / "mappings/reports/labels.yaml")
FACES = {"zh-Hans": "NotoSansCJKSC", "zh-Hant-HK": "NotoSansCJKHK", "en": "NotoSansCJKSC"}
# The extra case: the co-branded report of two mainland hospitals, for Hong Kong.
HK_COBRANDED = ("lax2-ct-report-cobranded.xml", None, "zh-Hant-HK+en", "lax2-ct-cobranded-hk")


@dataclass(frozen=True)
class Rendered:
    name: str
    columns: tuple[str, ...]  # the languages side by side
    pdf: bytes
    html: Path
    sources: tuple[Path, ...]  # the converted Bundles it was made from


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Run the demo (as `make demo` does) in a fresh home; add the extra case."""
    home = tmp_path_factory.mktemp("demo-home")
    settings = Settings.load(home=home, env={})
    assert run_demo(settings, io.StringIO()) == 0
    out = settings.out_dir / "demo"
    maker = ReportVariants(settings)
    report, _, lang, name = HK_COBRANDED
    bundle = next((out / Path(report).stem).glob("*.json")).read_bytes()
    extra = maker.variant(bundle, lang)
    (out / "variants" / f"{name}.pdf").write_bytes(extra.pdf)
    (out / "variants" / f"{name}.html").write_bytes(extra.html)
    found = {}
    cases = [(r, e, maker.preferred(p), n) for r, e, p, n in VARIANTS] + [HK_COBRANDED]
    for report, english, lang, name in cases:
        columns = tuple(lang.split("+"))
        sources = tuple(next((out / Path(f).stem).glob("*.json")) for f in (report, english) if f)
        pdf = (out / "variants" / f"{name}.pdf").read_bytes()
        found[name] = Rendered(name, columns, pdf, out / "variants" / f"{name}.html", sources)
    return found


NAMES = [*(name for *_, name in VARIANTS), HK_COBRANDED[3]]


def _run(tool: str | None, *args: str, data: bytes, to_stdout: tuple[str, ...] = ("-",)) -> str:
    if tool is None:
        pytest.skip("poppler-utils (pdffonts, pdftotext) is not installed: .ci/run installs it")
    with tempfile.NamedTemporaryFile(suffix=".pdf") as file:
        file.write(data)
        file.flush()
        done = subprocess.run([tool, *args, file.name, *to_stdout], capture_output=True, check=True)
    return done.stdout.decode("utf-8")


def _pdffonts(pdf: bytes) -> set[str]:
    """The embedded fonts' PostScript names, without the subset tag."""
    lines = _run(PDFFONTS, data=pdf, to_stdout=()).splitlines()[2:]  # after the heading
    return {line.split()[0].partition("+")[2] for line in lines if line.strip()}


def _pdftext(pdf: bytes, page: int | None = None) -> str:
    pages = ("-f", str(page), "-l", str(page)) if page else ()
    return _run(PDFTOTEXT, "-enc", "UTF-8", *pages, data=pdf)


def _column_text(case: Rendered, lang: str) -> str:
    """The text of one language's column (pdftotext cropped to it; A4 at 72 dpi, margins
    15 mm, columns of equal width): cells side by side would interleave otherwise."""
    mm = 72 / 25.4
    n, i = len(case.columns), case.columns.index(lang)
    width = 180 * mm / n
    x = 15 * mm + i * width
    crop = ("-r", "72", "-x", str(int(x)), "-y", "0", "-W", str(int(width)), "-H", "842")
    return _run(PDFTOTEXT, "-enc", "UTF-8", *crop, data=case.pdf)


def _squeezed(text: str) -> str:
    """Without whitespace: Chinese wrapped at a cell's edge reads on."""
    return re.sub(r"\s+", "", text)


def _spaced(text: str) -> str:
    return " ".join(text.split())


def _source_names(bundles: tuple[Path, ...]) -> set[str]:
    """Every Chinese name of a patient or practitioner, as the source records write it."""
    names = set()
    for path in bundles:
        for entry in json.loads(path.read_bytes())["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] not in ("Patient", "Practitioner"):
                continue
            for name in resource.get("name") or []:
                text = name.get("text") or name.get("family", "") + "".join(name.get("given", []))
                if re.search(r"[\u4e00-\u9fff]", text):
                    names.add(text)
    return names


def _runs(pdf: bytes) -> Iterator[tuple[str, str]]:
    """(text, font PostScript name) of every text run of the PDF."""
    runs: list[tuple[str, str]] = []

    def visit(text: str, cm: Any, tm: Any, font: Any, size: Any) -> None:
        if text.strip() and font is not None:
            base = str(font.get("/BaseFont", "")).lstrip("/").partition("+")[2]
            runs.append((text.replace("\x00", ""), base))  # pypdf: UTF-16 leftovers

    for page in PdfReader(io.BytesIO(pdf)).pages:
        page.extract_text(visitor_text=visit)
    yield from runs


@pytest.mark.parametrize("name", NAMES)
def test_each_language_is_set_in_its_own_face(demo: dict[str, Rendered], name: str) -> None:
    """pdffonts: the faces of the columns' languages, no other; each text run: Hong Kong
    Traditional text in the HK face, Simplified in the SC face (names aside: a name is
    shown as written, in the face of the column it stands in)."""
    case = demo[name]
    assert _pdffonts(case.pdf) == {FACES[lang] for lang in case.columns}
    to_simplified, to_hk = opencc.OpenCC("hk2s"), opencc.OpenCC("s2hk")
    names = _source_names(case.sources)
    fonts: Counter[tuple[str, str]] = Counter()
    for text, font in _runs(case.pdf):
        if any(n in text for n in names):
            continue
        if to_simplified.convert(text) != text:  # Traditional-only characters
            fonts[("zh-Hant-HK", font)] += 1
        elif to_hk.convert(text) != text:  # Simplified-only characters
            fonts[("zh-Hans", font)] += 1
    assert {face for script, face in fonts if script == "zh-Hant-HK"} <= {FACES["zh-Hant-HK"]}
    assert {face for script, face in fonts if script == "zh-Hans"} <= {FACES["zh-Hans"]}
    # Hong Kong Traditional text exactly when there is a zh-Hant-HK column (an English
    # column may show a Simplified display the terminology has no English for).
    assert (("zh-Hant-HK", FACES["zh-Hant-HK"]) in fonts) == ("zh-Hant-HK" in case.columns)
    assert ("zh-Hans", FACES["zh-Hans"]) in fonts or "zh-Hans" not in case.columns


@pytest.mark.parametrize("name", NAMES)
def test_names_are_the_source_names_exactly(demo: dict[str, Rendered], name: str) -> None:
    case = demo[name]
    text = _squeezed(_pdftext(case.pdf))
    names = _source_names(case.sources)
    assert names
    for person in names:
        assert person in text, f"{person!r} not in the PDF"
        for config in ("s2hk", "hk2s"):  # no script-converted form of a name
            converted = opencc.OpenCC(config).convert(person)
            assert converted == person or converted not in text, f"{converted!r} shown"


@pytest.mark.parametrize("name", NAMES)
def test_both_institutions_appear_with_their_roles(demo: dict[str, Rendered], name: str) -> None:
    case = demo[name]
    performed = {
        "lax2-ct-cobranded-for-lax2": {"zh-Hans": "来安县第二人民医院"},
        "lax2-ct-cobranded-hk": {"zh-Hant-HK": "來安縣第二人民醫院", "en": "Lai'an"},
        "nsch-cta-for-hkpmc": {"zh-Hant-HK": "廣州市第一人民醫院南沙醫院", "en": "Nansha Hospital"},
        "nsch-cta-for-nsgp": {
            "zh-Hans": "广州市第一人民医院南沙医院",
            "zh-Hant-HK": "廣州市第一人民醫院南沙醫院",
        },
    }[name]
    reported = {
        "lax2-ct-cobranded-for-lax2": {"zh-Hans": "南京医科大学第二附属医院"},
        "lax2-ct-cobranded-hk": {"zh-Hant-HK": "南京醫科大學第二附屬醫院"},
        "nsch-cta-for-hkpmc": {"en": "Greater Bay Area Medical Group Hong Kong Partner"},
        "nsch-cta-for-nsgp": {"zh-Hans": "广州市第一人民医院南沙医院", "en": "Greater Bay Area"},
    }[name]
    for role, where in (("performed_at", performed), ("interpreted_at", reported)):
        for lang, institution in where.items():
            column = _column_text(case, lang)
            label = LABELS[lang][role]
            if lang == "en":
                assert f"{label}: {institution}" in _spaced(column)
            else:
                assert _squeezed(f"{label}：{institution}") in _squeezed(column)


def test_the_co_branded_report_names_both_radiologists_with_their_roles(
    demo: dict[str, Rendered],
) -> None:
    case = demo["lax2-ct-cobranded-hk"]
    squeezed = _squeezed(_column_text(case, "zh-Hant-HK"))
    hk = LABELS["zh-Hant-HK"]
    assert f"{hk['expert_radiologist']}：徐静（南京醫科大學第二附屬醫院）" in squeezed
    assert f"{hk['local_radiologist']}：孙昞（來安縣第二人民醫院）" in squeezed
    # the English column, still pending, does not claim a reporter
    english = _spaced(_column_text(case, "en"))
    assert f"Reported by: {LABELS['en']['not_reported']}" in english
    assert "Radiologist" not in english and "Xu Jing" not in english.title()


def test_each_language_shows_its_own_issue_time(demo: dict[str, Rendered]) -> None:
    case = demo["nsch-cta-for-hkpmc"]
    english = _spaced(_column_text(case, "en"))
    assert "Issued: 2026-06-17 10:10 +08:00" in english  # the Hong Kong radiologist's report
    assert "報告時間：2026-06-1615:25+08:00" in _squeezed(_column_text(case, "zh-Hant-HK"))


@pytest.mark.parametrize("name", NAMES)
def test_every_page_has_the_footer_with_page_x_of_y(demo: dict[str, Rendered], name: str) -> None:
    case = demo[name]
    pages = len(PdfReader(io.BytesIO(case.pdf)).pages)
    assert pages >= 1
    report = next(
        e["resource"]
        for e in json.loads(case.sources[0].read_bytes())["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    numbers = [i["value"] for i in report["identifier"]]
    for page in range(1, pages + 1):
        footer = _spaced(_pdftext(case.pdf, page))
        assert any(number in footer for number in numbers)
        for lang in case.columns:
            assert LABELS[lang]["page"].format(page=page, pages=pages) in footer, (lang, page)


def _chromium() -> Any:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip(
            "chromium and chromium-driver (Debian) are not installed: .ci/run installs them"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
    ):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}")
    return webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = _chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _glyphs_by_font(browser: Any, page: Path) -> tuple[list[str], Counter[tuple[str, bool, str]]]:
    """The page's web fonts (family: status) once loaded, and per (font family, is a web
    font, lang) the glyphs Chromium drew with it (DevTools CSS.getPlatformFontsForNode:
    a glyph no embedded font has is drawn by a system fallback font, or as a box)."""
    browser.get(page.as_uri())
    loaded = browser.execute_async_script(
        "const done = arguments[0];"
        "document.fonts.ready.then(() =>"
        " done([...document.fonts].map(f => f.family + ': ' + f.status)));"
    )
    browser.execute_cdp_cmd("DOM.enable", {})
    browser.execute_cdp_cmd("CSS.enable", {})
    root = browser.execute_cdp_cmd("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    nodes = browser.execute_cdp_cmd("DOM.querySelectorAll", {"nodeId": root, "selector": "body *"})
    glyphs: Counter[tuple[str, bool, str]] = Counter()
    for node in nodes["nodeIds"]:
        handle = browser.execute_cdp_cmd("DOM.resolveNode", {"nodeId": node})["object"]
        owner, leaf = browser.execute_cdp_cmd(
            "Runtime.callFunctionOn",
            {
                "objectId": handle["objectId"],
                "functionDeclaration": "function() {"
                " return [this.closest('[lang]').lang, this.children.length === 0]; }",
                "returnByValue": True,
            },
        )["result"]["value"]
        for font in browser.execute_cdp_cmd("CSS.getPlatformFontsForNode", {"nodeId": node})[
            "fonts"
        ]:
            # an element holding others counts their glyphs too: its language is theirs
            # only when it is a leaf
            glyphs[(font["familyName"], font["isCustomFont"], owner if leaf else "")] += font[
                "glyphCount"
            ]
    return loaded, glyphs


@pytest.mark.parametrize("name", NAMES)
def test_the_html_draws_every_glyph_from_its_embedded_fonts(
    demo: dict[str, Rendered], browser: Any, name: str
) -> None:
    case = demo[name]
    html = case.html.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)=|url\((?!data:)", html)  # nothing fetched: no network
    assert len(case.html.read_bytes()) < 400_000  # subsets, not the 19 MB collection
    loaded, glyphs = _glyphs_by_font(browser, case.html)
    cuts = {"zh-Hans": "sc", "zh-Hant-HK": "hk", "en": "sc"}
    assert sorted(loaded) == sorted({f"{web_family(cuts[lang])}: loaded" for lang in case.columns})
    fallback = {key: n for key, n in glyphs.items() if not key[1]}
    assert not fallback, f"glyphs drawn by system fonts: {fallback}"
    for (family, _, lang), count in glyphs.items():
        if count and lang in cuts:
            assert family == f"Noto Sans CJK {cuts[lang].upper()}", (family, lang)
