"""The rendered report as PDF (fpdf2), with Noto Sans CJK SC from the PyPI package
``mplfonts`` subset and embedded: no system fonts, no network.

Loading the 16 MB OpenType font is the expensive part of a PDF (fontTools reads its
cmap and metrics for ~65,000 glyphs: ~0.3 s). It is loaded once per process into a
prototype; each document gets a copy of the prototype's metrics (fpdf2's own
``TTFFont.__deepcopy__``, which FPDFRecorder uses) and a fresh lazy fontTools reader
over the cached font bytes, because fpdf2 subsets that reader in place when it writes
the PDF.
"""

from __future__ import annotations

import copy
import functools
import io
import logging
import threading
from collections.abc import Iterable
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from fontTools import ttLib  # type: ignore[import-untyped]
from fpdf import FPDF, FontFace
from fpdf.enums import XPos, YPos

from ..errors import ConfigError
from ._render import DETAILS, detail_value, header_lines, joined, signer_line
from ._view import ReportView

__all__ = ["font_path", "render_pdf"]

FONT_PACKAGE = "mplfonts"
FONT_FILE = "NotoSansCJKsc-Regular.otf"
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
_PROTOTYPE: dict[str, Any] = {}  # "font" → TTFFont, "data" → bytes


class _NoGlyphList(logging.Filter):
    """fpdf2 logs the characters its font lacks, quoted: characters of the report (a
    rare character of a patient's name). The log keeps that glyphs are missing, not which."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Font %s is missing the following glyphs"):
            record.msg = "Font %s is missing glyphs for some characters of the report"
            record.args = record.args[:1] if isinstance(record.args, tuple) else ()
        return True


logging.getLogger("fpdf.output").addFilter(_NoGlyphList())


def font_path() -> Path:
    """The installed Noto Sans CJK SC file (package data of mplfonts)."""
    try:
        path = Path(str(resources.files(FONT_PACKAGE) / "fonts" / FONT_FILE))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            "report-font",
            f"the PDF font {FONT_FILE} was not found: install the {FONT_PACKAGE} package "
            "(pip install mplfonts; the README's set-up does)",
        )
    return path


@functools.cache
def _covered() -> frozenset[int]:
    """The code points the PDF font has glyphs for (its best cmap), read once."""
    font = ttLib.TTFont(str(font_path()), lazy=True)
    try:
        return frozenset(font.getBestCmap() or ())
    finally:
        font.close()


def missing_glyphs(texts: Iterable[str]) -> int:
    """How many distinct characters of ``texts`` the PDF font cannot draw (some rare
    characters of Hong Kong names are beyond Noto Sans CJK SC): the PDF shows them
    blank, so the caller must say so. Never which characters: they may be a name."""
    covered = _covered()
    seen = {ch for text in texts for ch in text if not ch.isspace()}
    return sum(1 for ch in seen if ord(ch) not in covered)


def _prototype() -> tuple[Any, bytes]:
    with _LOCK:
        if not _PROTOTYPE:
            path = font_path()
            loader = FPDF()
            loader.add_font(_FAMILY, fname=str(path))
            _PROTOTYPE["font"] = loader.fonts[_FAMILY]
            _PROTOTYPE["data"] = path.read_bytes()
        return _PROTOTYPE["font"], _PROTOTYPE["data"]


def _new_pdf(created: datetime, lang: str, title: str) -> FPDF:
    proto, data = _prototype()
    pdf = FPDF(format="A4")
    font = copy.deepcopy(proto)
    font.ttfont = ttLib.TTFont(io.BytesIO(data), recalcTimestamp=False, lazy=True)
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
