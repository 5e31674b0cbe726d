"""What a DICOM sender should declare in (0008,0005) SpecificCharacterSet for its text:
the hint of every message about a missing or wrong one (the charset check's refusals,
the view's undecodable-bytes warning)."""

from __future__ import annotations

__all__ = ["NAMES", "declare_hint"]

NAMES = {"utf-8": "UTF-8 (ISO_IR 192)", "gb18030": "GB18030", "big5hkscs": "Big5-HKSCS"}

# What the sender should declare for text in each likely charset: DICOM has no term for
# Big5, so such a sender must send UTF-8 instead (PS3.3 C.12.1.1.2)
_DECLARE = {
    "utf-8": "declare (0008,0005) SpecificCharacterSet 'ISO_IR 192'",
    "gb18030": "declare (0008,0005) SpecificCharacterSet 'GB18030'",
    "big5hkscs": (
        "send the text in UTF-8 with (0008,0005) SpecificCharacterSet 'ISO_IR 192', "
        "as DICOM has no term for Big5"
    ),
}


def declare_hint(likely: str) -> str:
    """What the sender must set for text that is ``likely`` (a codec of MULTI_BYTE)."""
    return _DECLARE.get(likely, "declare its character set in (0008,0005) SpecificCharacterSet")
