"""The PDF font: an OFL Noto Sans CJK collection whose licence is installed with it, its
SC / TC / HK cuts, and what the PDF embeds."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

import pytest
from pypdf import PdfReader

from gateway.reports import font_path
from gateway.reports._pdf import FONT_DISTRIBUTION, _new_pdf, family, pdf_font

WHEN = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)


def _base_fonts(pdf: bytes) -> list[str]:
    """BaseFont of every embedded (subset) font: fpdf2 names it ``ABCDEF+<PostScript>``."""
    names = []
    for page in PdfReader(io.BytesIO(pdf)).pages:
        for ref in page["/Resources"]["/Font"].values():
            font: Any = ref.get_object()
            for descendant in font.get("/DescendantFonts", [font]):
                desc = descendant.get_object()["/FontDescriptor"].get_object()
                assert "/FontFile3" in desc or "/FontFile2" in desc  # embedded, not referenced
                names.append(str(descendant.get_object()["/BaseFont"]))
    return names


def test_the_ofl_licence_is_installed_with_the_font() -> None:
    face = pdf_font()
    dist = metadata.distribution(FONT_DISTRIBUTION)
    installed = {dist.locate_file(f) for f in dist.files or ()}
    assert face.path in installed and face.licence in installed  # one distribution ships both
    text = face.licence.read_text(encoding="utf-8")
    assert "SIL OPEN FONT LICENSE Version 1.1" in text
    assert "OFL-1.1" in (dist.metadata.get("License-Expression") or "")


@pytest.mark.parametrize("cut", ["sc", "tc", "hk"])
def test_each_cut_is_its_own_face_of_the_collection_and_is_embedded_subset(cut: Any) -> None:
    face = pdf_font(cut)
    assert face.name == f"NotoSansCJK{cut}-Regular" and face.path == font_path()
    pdf = _new_pdf(WHEN, "zh-HK", "t", [cut])
    pdf.set_font(family(cut), size=12)
    pdf.multi_cell(100, 10, "陳大文 骨 這是測試")
    data = bytes(pdf.output())
    [base] = _base_fonts(data)
    tag, _, postscript = base.lstrip("/").partition("+")
    assert postscript == f"NotoSansCJK{cut.upper()}" and len(tag) == 6  # a subset of that cut
    assert len(data) < 100_000  # a few glyphs, not the 19 MB collection


def test_the_cuts_draw_the_same_character_differently() -> None:
    from fontTools import ttLib

    outlines = {}
    for cut in ("sc", "hk"):
        face = pdf_font(cut)
        font = ttLib.TTFont(str(face.path), fontNumber=face.index, lazy=True)
        glyph = font.getBestCmap()[ord("骨")]
        outlines[cut] = font["CFF "].cff.topDictIndex[0].CharStrings[glyph].bytecode
        font.close()
    assert outlines["sc"] != outlines["hk"]  # 骨: mainland and Hong Kong shapes differ
