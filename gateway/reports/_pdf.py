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
from typing import Any, Literal, cast

from fontTools import ttLib  # type: ignore[import-untyped]
from fpdf import FPDF, FontFace
from fpdf.enums import XPos, YPos

from ..errors import ConfigError
from ._render import (
    detail_rows,
    footer_spans,
    header_lines,
    institution_rows,
    joined,
    radiologist_lines,
    signature_fields,
)
from ._view import ReportView

__all__ = ["Cut", "PdfFont", "family", "font_path", "pdf_font", "render_pdf"]

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
_SIGNATURE_HEIGHT = 38  # mm: the fields and blank room for a signature's appearance

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


def family(cut: str) -> str:
    """The fpdf2 family name of a cut's face."""
    return f"{_FAMILY}{cut}"


class _ReportPDF(FPDF):
    """A4 with a footer on every page: the report number and page x of y, each
    language in its own font."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.views: list[ReportView] = []

    def footer(self) -> None:
        if not self.views:
            return
        self.set_y(-13)
        self.set_text_color(*_GREY)
        self.set_draw_color(*_GREY)
        self.set_line_width(0.2)
        self.line(self.l_margin, self.get_y(), self.l_margin + self.epw, self.get_y())
        spans = footer_spans(self.views, str(self.page_no()), self.str_alias_nb_pages)
        _spans_line(self, [(v.cut, text) for v, text in spans], 8, 5)


def _new_pdf(created: datetime, lang: str, title: str, cuts: Iterable[Cut] = ("sc",)) -> _ReportPDF:
    """A document with a face registered per cut (family ``family(cut)``)."""
    pdf = _ReportPDF(format="A4")
    for cut in dict.fromkeys(cuts):
        proto, face, data = _prototype(cut)
        font = copy.deepcopy(proto)
        font.ttfont = ttLib.TTFont(
            io.BytesIO(data), recalcTimestamp=False, lazy=True, fontNumber=face.index
        )
        font.i = len(pdf.fonts) + 1
        font.fontkey = family(cut)
        pdf.fonts[family(cut)] = font
        if font.is_cff and font.is_cid_keyed:
            pdf._set_min_pdf_version("1.6")  # as FPDF.add_font does for CID-keyed CFF fonts
    pdf.set_creation_date(created)  # the report's time: same report, same bytes
    pdf.set_lang(lang)
    pdf.set_title(title)
    pdf.set_creator("fhir-gateway")
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=18)  # room for the footer
    pdf.add_page()
    return pdf


def _spans_line(pdf: FPDF, spans: list[tuple[str, str]], size: float, height: float) -> None:
    """One centred line of spans, each in its cut's face, joined by ' · ' (a line too
    long for the page is written span by span, one line each)."""
    sep = " · "
    widths = []
    for cut, text in spans:
        pdf.set_font(family(cut), size=size)
        widths.append(pdf.get_string_width(text))
    total = sum(widths) + pdf.get_string_width(sep) * (len(spans) - 1)
    if total > pdf.epw:
        for cut, text in spans:
            pdf.set_font(family(cut), size=size)
            pdf.multi_cell(pdf.epw, height, text, align="C", **_NEXT)
        return
    pdf.set_x(pdf.l_margin + (pdf.epw - total) / 2)
    for n, ((cut, text), width) in enumerate(zip(spans, widths, strict=True)):
        pdf.set_font(family(cut), size=size)
        if n:
            pdf.cell(pdf.get_string_width(sep), height, sep, new_x=XPos.RIGHT, new_y=YPos.TOP)
        pdf.cell(width, height, text, new_x=XPos.RIGHT, new_y=YPos.TOP)
    pdf.ln(height)


def render_pdf(views: list[ReportView], created: datetime) -> bytes:
    """The report on A4, one column per language, each language in its font cut:
    header (co-branded institutions, titles), who did what, details, findings and
    impression, radiologists with roles and issue times, a signature block per signer;
    a footer with the report number and page x of y on every page."""
    title = joined([v.label("title") for v in views]) or ""
    pdf = _new_pdf(created, views[0].lang, title, [cast(Cut, v.cut) for v in views])
    pdf.views = views
    width = pdf.epw
    # Co-branded header: every institution, performer first, in each column's language.
    pdf.set_text_color(*_NAVY)
    for names in header_lines(views):
        for n, (view, name) in enumerate(names):  # the first language large, others beneath
            pdf.set_font(family(view.cut), size=13 if n == 0 else 9)
            pdf.multi_cell(width, 7 if n == 0 else 5, name, align="C", **_NEXT)
    pdf.ln(1)
    _spans_line(pdf, [(v.cut, v.label("title")) for v in views], 17, 9)
    pdf.set_draw_color(*_NAVY)
    pdf.set_line_width(0.6)
    pdf.line(pdf.l_margin, pdf.get_y() + 1, pdf.l_margin + width, pdf.get_y() + 1)
    pdf.ln(4)
    pdf.set_text_color(0, 0, 0)
    _columns(pdf, views, [institution_rows(v) for v in views], size=9.5)
    pdf.ln(2)
    _columns(pdf, views, [detail_rows(v, _DETAIL_CHARS) for v in views], size=9, grey=True)
    pdf.ln(3)
    _sections(pdf, views)
    _columns(pdf, views, [radiologist_lines(v) for v in views], size=9.5)
    pdf.ln(3)
    _signatures(pdf, views)
    return bytes(pdf.output())


# Chinese line breaking (kinsoku): closing punctuation never starts a line, opening
# punctuation never ends one (fpdf2 knows no such rule: '，大小約' started a line).
_NO_START = frozenset("，。、；：？！）」』】》〉〕］｝”’…%％·・～")
_NO_END = frozenset("（「『【《〈〔［｛“‘")


def _unbroken(pdf: FPDF, view: ReportView, text: str, width: float = 0, size: float = 0) -> str:
    """Chinese text as the cell should show it: broken into lines of ``width`` mm by the
    Chinese rules (when given), its spaces non-breaking (fpdf2 breaks lines at spaces
    first, so '1. 左側基底節區…' broke after '1.')."""
    if not view.chinese:
        return text
    if width > 0:
        pdf.set_font(family(view.cut), size=size)
        text = "\n".join(_kinsoku(pdf, para, width) for para in text.split("\n"))
    return text.replace(" ", "\u00a0")


def _kinsoku(pdf: FPDF, text: str, width: float) -> str:
    lines: list[str] = []
    line = ""
    for ch in text:
        if line and pdf.get_string_width(line + ch) > width:
            whole, carry = line, ch
            # a closing mark takes the character before it along; a Latin word or
            # number ('12HU', 'MRI') moves whole; an opening mark goes with what follows
            while len(line) > 1 and (
                carry[0] in _NO_START
                or (_latin(carry[0]) and _latin(line[-1]))
                or line[-1] in _NO_END
            ):
                carry, line = line[-1] + carry, line[:-1]
            if len(line) <= 1:  # one unbreakable run ('xxxx…'): break at the width
                line, carry = whole, ch
            lines.append(line)
            line = carry
        else:
            line += ch
    lines.append(line)
    return "\n".join(lines)


def _latin(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch in ".+-%")


def _cell_width(pdf: FPDF, views: list[ReportView], padding: float, gutter: float = 0) -> float:
    """The text width of a column's cell (a little less: fpdf2 measures its own way)."""
    return (pdf.epw - gutter * (len(views) - 1)) / len(views) - 2 * padding - 1.5


def _table(pdf: FPDF, views: list[ReportView], **options: Any) -> Any:
    """A table with a column per language: text top-aligned and ragged right (justified
    English opened wide gaps)."""
    return pdf.table(
        col_widths=tuple(1 for _ in views),
        v_align="TOP",
        text_align="LEFT",
        **options,
    )


def _columns(
    pdf: FPDF, views: list[ReportView], lines: list[list[str]], size: float, grey: bool = False
) -> None:
    """Rows of one line per language, each column in its language's face."""
    pdf.set_font(family(views[0].cut), size=size)
    with _table(
        pdf,
        views,
        first_row_as_headings=False,
        borders_layout="HORIZONTAL_LINES",
        line_height=size * 0.55,
        padding=1,
    ) as table:
        width = _cell_width(pdf, views, 1)
        for n in range(max(len(column) for column in lines)):
            row = table.row()
            for view, column in zip(views, lines, strict=True):
                style = FontFace(family=family(view.cut), color=_GREY if grey else None)
                text = column[n] if n < len(column) else ""
                row.cell(_unbroken(pdf, view, text, width, size), style=style)
        pdf.set_font(family(views[0].cut), size=size)


def _sections(pdf: FPDF, views: list[ReportView]) -> None:
    """Findings and impression, the languages side by side (one column each)."""
    pdf.set_text_color(0, 0, 0)
    for key in ("findings", "impression"):
        pdf.set_font(family(views[0].cut), size=10)
        with _table(
            pdf,
            views,
            first_row_as_headings=True,
            headings_style=FontFace(color=_NAVY, fill_color=(230, 236, 245)),
            line_height=6,
            padding=2,
        ) as table:
            width = _cell_width(pdf, views, 2)
            head = table.row()
            for view in views:
                head.cell(view.label(key), style=FontFace(family=family(view.cut), color=_NAVY))
            cells: list[list[tuple[str, FontFace]]] = []
            for view in views:
                face = FontFace(family=family(view.cut))
                texts = view.findings if key == "findings" else (view.impression,)
                text = "\n".join(t for t in texts if t)
                if not text and view.pending:
                    pending = FontFace(family=family(view.cut), color=_PENDING)
                    cells.append([(view.label("pending"), pending)])
                else:
                    cells.append([(piece, face) for piece in _pieces(text or view.label("none"))])
            for n in range(max(len(c) for c in cells)):
                row = table.row()
                for view, column in zip(views, cells, strict=True):
                    text, style = (
                        column[n] if n < len(column) else ("", FontFace(family=family(view.cut)))
                    )
                    row.cell(_unbroken(pdf, view, text, width, 10), style=style)
            pdf.set_font(family(views[0].cut), size=10)
        pdf.ln(3)


def _signatures(pdf: FPDF, views: list[ReportView]) -> None:
    """The signature block: per language, a box per signer with the signer's name, role,
    institution and time, and blank room beneath for the signature the signing step
    places there; a pending language says it is not reported yet."""
    fields = [signature_fields(v) for v in views]
    rows = max(1, *(len(f) for f in fields))
    pdf.set_font(family(views[0].cut), size=9)
    with _table(
        pdf,
        views,
        first_row_as_headings=True,
        headings_style=FontFace(color=_NAVY, fill_color=(230, 236, 245)),
        line_height=5,
        padding=2,
        gutter_width=4,
        gutter_height=2,
    ) as table:
        width = _cell_width(pdf, views, 2, 4)
        head = table.row()
        for view in views:
            head.cell(view.label("signature"), style=FontFace(family=family(view.cut), color=_NAVY))
        for n in range(rows):
            row = table.row(min_height=_SIGNATURE_HEIGHT)
            for view, signers in zip(views, fields, strict=True):
                face = FontFace(family=family(view.cut))
                if n < len(signers):
                    text = "\n".join(signers[n])
                    row.cell(_unbroken(pdf, view, text, width, 9), style=face)
                elif n == 0:
                    pending = FontFace(family=family(view.cut), color=_PENDING)
                    row.cell(view.label("not_reported"), style=pending)
                else:
                    row.cell("", style=face)
        pdf.set_font(family(views[0].cut), size=9)  # the table draws at the block's end


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
