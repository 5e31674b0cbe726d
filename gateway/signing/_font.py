"""The reports' CJK font, as one font file (PDF signature blocks, the auditor's report)."""

from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path

__all__ = ["font_file"]


@cache
def font_file() -> str:
    """``gateway.reports.font_path()``; from a .ttc/.otc collection its first font is
    extracted once (pyHanko and fpdf2 embed single fonts)."""
    from ..reports import font_path

    path = Path(font_path())
    if path.suffix.lower() not in (".ttc", ".otc"):
        return str(path)
    from fontTools.ttLib import TTCollection  # type: ignore[import-untyped]

    font = TTCollection(str(path)).fonts[0]
    out = Path(tempfile.mkdtemp(prefix="gateway-font-")) / "font.otf"
    font.save(str(out))
    return str(out)
