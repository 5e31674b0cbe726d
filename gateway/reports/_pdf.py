"""The rendered report as PDF (fpdf2), with Noto Sans CJK subset and embedded: no
system fonts, no network.

The font is the Noto Sans CJK OpenType Collection (Regular, SIL OFL 1.1) of the PyPI
package ``noto-cjk-sans-otc``, whose distribution installs the licence with it; one
19 MB file holds the Simplified Chinese (SC), Traditional (TC) and Hong Kong (HK) cuts,
each a face of the collection (:func:`pdf_font`).

Loading a face is the expensive part of a PDF (fontTools reads its cmap and metrics for
~65,000 glyphs: ~0.3 s). It is loaded once per process into a prototype; each document
gets a copy of the prototype's metrics (fpdf2's own ``TTFFont.__deepcopy__``, which
FPDFRecorder uses) and a fresh lazy fontTools reader over the cached font bytes, because
fpdf2 subsets that reader in place when it writes the PDF.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from fontTools import ttLib  # type: ignore[import-untyped]
from fpdf import FPDF, FontFace
from fpdf.enums import XPos, YPos

from ..errors import ConfigError
from ._render import DETAILS, detail_value, header_lines, joined, signer_line
from ._view import ReportView

__all__ = ["Cut", "PdfFont", "font_path", "pdf_font", "render_pdf"]

Cut = Literal["sc", "tc", "hk"]  # Simplified Chinese, Traditional Chinese, Hong Kong
FONT_DISTRIBUTION = "noto-cjk-sans-otc"
FONT_FILE = "NotoSansCJK-Regular.ttc"
# The face of each cut in the collection, by PostScript name (not by index: a new
# release of the collection may order its faces differently).
_FACES: dict[str, str] = {
    "sc": "NotoSansCJKsc-Regular",
    "tc": "NotoSansCJKtc-Regular",
    "hk": "NotoSansCJKhk-Regular",
}
_FAMILY = "notosanscjk"
_NAVY = (31, 59, 99)
_GREY = (90, 90, 90)
_PENDING = (170, 51, 51)

# fpdf2 cannot split a table row across pages: long texts go in rows of at most this
# many characters and lines (a third of A4's width holds ~15 CJK characters a line).
_ROW_CHARS, _ROW_LINES = 300, 15
_DETAIL_CHARS = 200  # a detail value (name, MRN, exam) beyond this is cut with '…'

_NEXT: dict[str, Any] = {"new_x": XPos.LMARGIN, "new_y": YPos.NEXT}
_LOCK = threading.Lock()
_PROTOTYPES: dict[str, Any] = {}  # cut → fpdf2 TTFFont of that face
_DATA: dict[str, bytes] = {}  # "ttc" → the collection's bytes, read once


class _NoGlyphList(logging.Filter):
    """fpdf2 logs the characters its font lacks, quoted: characters of the report (a
    rare character of a patient's name). The log keeps that glyphs are missing, not which."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Font %s is missing the following glyphs"):
            record.msg = "Font %s is missing glyphs for some characters of the report"
            record.args = record.args[:1] if isinstance(record.args, tuple) else ()
        return True


logging.getLogger("fpdf.output").addFilter(_NoGlyphList())


@dataclass(frozen=True, slots=True)
class PdfFont:
    """One cut of the PDF font: the collection file, the face's index in it, and the
    OFL licence file its distribution installed."""

    path: Path
    index: int
    name: str  # PostScript name, e.g. NotoSansCJKsc-Regular
    licence: Path


def _distribution_file(dist: metadata.Distribution, suffix: str) -> Path | None:
    for file in dist.files or ():
        if str(file).endswith(suffix):
            return Path(str(dist.locate_file(file)))
    return None


def _missing(what: str) -> ConfigError:
    return ConfigError(
        "report-font",
        f"the PDF font's {what} was not found: install the {FONT_DISTRIBUTION} package "
        f"(pip install {FONT_DISTRIBUTION}; the gateway's install does)",
    )


@functools.cache
def _installed() -> tuple[Path, Path]:
    """(collection file, licence file) of the installed font distribution."""
    try:
        dist = metadata.distribution(FONT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise _missing("package") from None
    path = _distribution_file(dist, "/" + FONT_FILE)
    if path is None or not path.is_file():
        raise _missing(f"file {FONT_FILE}")
    licence = _distribution_file(dist, "/LICENSE")
    if licence is None or not licence.is_file():
        raise _missing("licence file")
    return path, licence


@functools.cache
def pdf_font(cut: Cut = "sc") -> PdfFont:
    """The face of the PDF font for ``cut`` (SC, TC or HK glyph shapes; every cut covers
    the same characters). Raises ConfigError ``report-font`` when it is not installed."""
    path, licence = _installed()
    wanted = _FACES[cut]
    collection = ttLib.TTCollection(str(path), lazy=True)
    try:
        names = [font["name"].getDebugName(6) for font in collection.fonts]
    finally:
        collection.close()
    if wanted not in names:
        raise _missing(f"face {wanted}")
    return PdfFont(path, names.index(wanted), wanted, licence)


def font_path(cut: Cut = "sc") -> Path:
    """The installed font collection file (every cut is a face of it: :func:`pdf_font`)."""
    return pdf_font(cut).path


@functools.cache
def _covered() -> frozenset[int]:
    """The code points the PDF font has glyphs for (its best cmap), read once."""
    face = pdf_font()
    font = ttLib.TTFont(str(face.path), fontNumber=face.index, lazy=True)
    try:
        return frozenset(font.getBestCmap() or ())
    finally:
        font.close()


def missing_glyphs(texts: Iterable[str]) -> int:
    """How many distinct characters of ``texts`` the PDF font cannot draw (some rare
    characters of Hong Kong names are beyond Noto Sans CJK): the PDF shows them
    blank, so the caller must say so. Never which characters: they may be a name."""
    covered = _covered()
    seen = {ch for text in texts for ch in text if not ch.isspace()}
    return sum(1 for ch in seen if ord(ch) not in covered)


def _prototype(cut: Cut) -> tuple[Any, PdfFont, bytes]:
    face = pdf_font(cut)
    with _LOCK:
        if cut not in _PROTOTYPES:
            loader = FPDF()
            loader.add_font(_FAMILY, fname=str(face.path), collection_font_number=face.index)
            _PROTOTYPES[cut] = loader.fonts[_FAMILY]
        if "ttc" not in _DATA:
            _DATA["ttc"] = face.path.read_bytes()
        return _PROTOTYPES[cut], face, _DATA["ttc"]


def _new_pdf(created: datetime, lang: str, title: str, cut: Cut = "sc") -> FPDF:
    proto, face, data = _prototype(cut)
    pdf = FPDF(format="A4")
    font = copy.deepcopy(proto)
    font.ttfont = ttLib.TTFont(
        io.BytesIO(data), recalcTimestamp=False, lazy=True, fontNumber=face.index
    )
    font.i = len(pdf.fonts) + 1
    pdf.fonts[_FAMILY] = font
    if font.is_cff and font.is_cid_keyed:
        pdf._set_min_pdf_version("1.6")  # as FPDF.add_font does for CID-keyed CFF fonts
    pdf.set_creation_date(created)  # the report's time: same report, same bytes
    pdf.set_lang(lang)
    pdf.set_title(title)
    pdf.set_creator("fhir-gateway")
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    return pdf


def render_pdf(views: list[ReportView], created: datetime) -> bytes:
    title = joined([v.label("title") for v in views]) or ""
    pdf = _new_pdf(created, views[0].lang, title)
    width = pdf.epw
    # Co-branded header: every institution, performer first, in each column's language.
    pdf.set_text_color(*_NAVY)
    for names in header_lines(views):
        for n, name in enumerate(names):  # the first language large, the others beneath
            pdf.set_font(_FAMILY, size=13 if n == 0 else 9)
            pdf.multi_cell(width, 7 if n == 0 else 5, name, align="C", **_NEXT)
    pdf.set_font(_FAMILY, size=17)
    pdf.ln(1)
    pdf.multi_cell(width, 9, title, align="C", **_NEXT)
    pdf.set_draw_color(*_NAVY)
    pdf.set_line_width(0.6)
    pdf.line(pdf.l_margin, pdf.get_y() + 1, pdf.l_margin + width, pdf.get_y() + 1)
    pdf.ln(4)
    _details(pdf, views)
    pdf.ln(3)
    _sections(pdf, views)
    pdf.ln(4)
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(_FAMILY, size=10)
    for view in views:
        pdf.multi_cell(width, 6, signer_line(view), **_NEXT)
    issued = joined([v.issued for v in views])
    if issued:
        label = joined([v.label("issued") for v in views])
        pdf.multi_cell(width, 6, f"{label}: {issued}", **_NEXT)
    return bytes(pdf.output())


def _details(pdf: FPDF, views: list[ReportView]) -> None:
    """Patient and exam details: two label/value pairs per row."""
    pdf.set_font(_FAMILY, size=9)
    pairs = []
    for key in DETAILS:
        # Labels stack (one line per language); values share a line when they differ.
        label = joined([v.label(key) for v in views], "\n") or key
        value = joined([detail_value(v, key) for v in views]) or views[0].label("none")
        if len(value) > _DETAIL_CHARS:
            value = value[: _DETAIL_CHARS - 1] + "…"
        pairs.append((label, value))
    grey = FontFace(color=_GREY)
    with pdf.table(
        col_widths=(18, 32, 18, 32),
        first_row_as_headings=False,
        borders_layout="HORIZONTAL_LINES",
        line_height=5.5,
        padding=1,
    ) as table:
        for n in range(0, len(pairs), 2):
            row = table.row()
            for label, value in pairs[n : n + 2]:
                row.cell(label, style=grey)
                row.cell(value)
            if len(pairs[n : n + 2]) == 1:
                row.cell("")
                row.cell("")


def _sections(pdf: FPDF, views: list[ReportView]) -> None:
    """Findings and impression, the languages side by side (one column each)."""
    heading = FontFace(color=_NAVY, fill_color=(230, 236, 245))
    pending = FontFace(color=_PENDING)
    pdf.set_text_color(0, 0, 0)
    for key in ("findings", "impression"):
        pdf.set_font(_FAMILY, size=10)
        with pdf.table(
            col_widths=tuple(1 for _ in views),
            first_row_as_headings=True,
            headings_style=heading,
            line_height=6,
            padding=2,
        ) as table:
            head = table.row()
            for view in views:
                head.cell(view.label(key))
            cells: list[list[tuple[str, FontFace | None]]] = []
            for view in views:
                texts = view.findings if key == "findings" else (view.impression,)
                text = "\n".join(t for t in texts if t)
                if not text and view.pending:
                    cells.append([(view.label("pending"), pending)])
                else:
                    cells.append([(piece, None) for piece in _pieces(text or view.label("none"))])
            for n in range(max(len(c) for c in cells)):
                row = table.row()
                for column in cells:
                    text, style = column[n] if n < len(column) else ("", None)
                    row.cell(text, style=style)
        pdf.ln(3)


def _pieces(text: str) -> list[str]:
    """The text in pieces that each fit a table row on one page (one piece when short)."""
    if len(text) <= _ROW_CHARS and text.count("\n") < _ROW_LINES:
        return [text]
    lines = [
        line[i : i + _ROW_CHARS]
        for line in text.split("\n")
        for i in range(0, len(line) or 1, _ROW_CHARS)
    ]
    pieces = [[lines[0]]]
    for line in lines[1:]:
        last = pieces[-1]
        if len(last) >= _ROW_LINES or sum(map(len, last)) + len(last) + len(line) > _ROW_CHARS:
            pieces.append([line])
        else:
            last.append(line)
    return ["\n".join(p) for p in pieces]
