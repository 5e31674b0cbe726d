"""Format detection from the first bytes of an input."""

from __future__ import annotations

__all__ = ["FORMATS", "detect_format"]

FORMATS = ("hl7v2",)  # input formats this version converts


def detect_format(data: bytes) -> str:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if head.startswith((b"MSH", b"FHS", b"BHS")):
        return "hl7v2"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"<"):
        return "xml"
    if head.startswith((b"{", b"[")):
        return "json"
    return "unknown"
