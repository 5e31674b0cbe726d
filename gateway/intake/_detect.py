"""Format detection from the first bytes of an input."""

from __future__ import annotations

import re

__all__ = ["FORMATS", "detect_format"]

FORMATS = ("hl7v2", "dicom", "cda")  # input formats this version converts

# DICOM JSON (PS3.18 Annex F): an object, or an array of them, keyed by 8-hex-digit tags.
_DICOM_JSON = re.compile(rb'\A\[?\s*\{\s*"[0-9A-Fa-f]{8}"\s*:')


def detect_format(data: bytes) -> str:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if head.startswith((b"MSH", b"FHS", b"BHS")):
        return "hl7v2"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"PK\x03\x04"):
        return "dicom"  # a zip archive: the one archive kind the gateway takes (of DICOM files)
    if head.startswith(b"<"):
        return "cda"  # the one XML kind the gateway converts; the reader checks the root
    if _DICOM_JSON.match(head):
        return "dicom"
    if head.startswith((b"{", b"[")):
        return "json"
    return "unknown"
