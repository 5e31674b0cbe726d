"""Format detection from the first bytes of an input."""

from __future__ import annotations

import re

__all__ = ["FORMATS", "detect_format"]

FORMATS = ("hl7v2", "dicom", "cda")  # input formats this version converts

# DICOM JSON (PS3.18 Annex F): an object, or an array of them, keyed by 8-hex-digit tags.
_DICOM_JSON = re.compile(rb'\A\[?\s*\{\s*"[0-9A-Fa-f]{8}"\s*:')


def _raw_dicom(data: bytes) -> bool:
    """A DICOM dataset written without the 128-byte preamble and 'DICM' (as some
    exporters and older files do): it starts with an element of group 0002 (file meta)
    or 0008 (little endian), then an explicit VR or an implicit length that fits."""
    if len(data) < 8 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    vr = data[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    return int.from_bytes(data[4:8], "little") <= len(data) - 8


def detect_format(data: bytes) -> str:
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n\x0b")
    if head.startswith((b"MSH", b"FHS", b"BHS")):
        return "hl7v2"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        # A zip archive (or an empty one: only its end record): the one archive kind
        # the gateway takes (of DICOM files); the DICOM reader says what is in it.
        return "dicom"
    if _raw_dicom(data):
        return "dicom"
    if head.startswith(b"<"):
        return "cda"  # the one XML kind the gateway converts; the reader checks the root
    if _DICOM_JSON.match(head):
        return "dicom"
    if head.startswith((b"{", b"[")):
        return "json"
    return "unknown"
