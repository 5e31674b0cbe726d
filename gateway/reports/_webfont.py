"""The HTML report's fonts: per face it uses, a subset of the PDF's Noto Sans CJK cut
holding the characters the report shows, embedded as a WOFF ``data:`` URL. The page
then renders the same glyphs everywhere: no system CJK font, no network.

Subsetting reads the face's CFF outlines (~1 s a face): the last few subsets are kept,
as the same report is often rendered again (the variants of one report share texts).
"""

from __future__ import annotations

import base64
import functools
import io
from typing import TYPE_CHECKING, cast

from fontTools import subset, ttLib  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from ._pdf import Cut
    from ._view import ReportView

__all__ = ["font_faces", "web_family", "woff_subset"]


def web_family(cut: str) -> str:
    """The CSS family name of an embedded face (one per cut)."""
    return f"Report Noto Sans CJK {cut.upper()}"


@functools.lru_cache(maxsize=16)
def woff_subset(cut: Cut, characters: str) -> bytes:
    """A WOFF font of face ``cut`` holding the glyphs of ``characters`` (sorted, distinct:
    the cache key) and what shaping them needs."""
    from ._pdf import pdf_font  # _pdf renders with _render, which uses this module

    face = pdf_font(cut)
    font = ttLib.TTFont(str(face.path), fontNumber=face.index, lazy=True, recalcTimestamp=False)
    try:
        options = subset.Options()
        options.name_IDs = ["*"]  # keep the copyright and licence (OFL) records
        options.notdef_outline = True
        subsetter = subset.Subsetter(options)
        subsetter.populate(text=characters)
        subsetter.subset(font)
        font.flavor = "woff"  # zlib: WOFF2's brotli is not a dependency
        out = io.BytesIO()
        font.save(out)
        return out.getvalue()
    finally:
        font.close()


def font_faces(views: list[ReportView], texts: dict[str, str]) -> str:
    """CSS: an @font-face per cut the views use, a subset for the characters of
    ``texts[cut]`` as a data: URL, and each language's text set in its cut."""
    rules = []
    for cut in dict.fromkeys(v.cut for v in views):
        characters = "".join(sorted(set(texts.get(cut, "")) - set("\n\r\t")))
        data = base64.b64encode(woff_subset(cast("Cut", cut), characters)).decode("ascii")
        rules.append(
            f'@font-face {{ font-family: "{web_family(cut)}"; '
            f'src: url(data:font/woff;base64,{data}) format("woff"); }}'
        )
    for view in {v.lang: v for v in views}.values():
        rules.append(
            f'[lang="{view.lang}"] {{ font-family: "{web_family(view.cut)}", sans-serif; }}'
        )
    return "\n  ".join(rules)
