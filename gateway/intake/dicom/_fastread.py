"""A Part 10 header read for the common case, at about twice ``dcmread``'s speed.

``dcmread(stop_before_pixels=True)`` spends half its time outside the element parse:
it builds the file meta and the dataset twice each (a ``Dataset`` then a
``FileMetaDataset`` / ``FileDataset`` copy, ~90 attribute sets a file), sniffs the
command set and the VR encoding. For a file in the usual shape (preamble, explicit VR
file meta with a Transfer Syntax UID of implicit or explicit VR little endian, then
the dataset) this reads the very same elements with pydicom's own element parser
(``data_element_generator``: the same RawDataElements, values still converted only on
access) into one ``Dataset`` with the same file meta, encoding and file position.
Anything else (no preamble, deflated, big endian, a command set, a VR encoding that
contradicts the transfer syntax, a file cut short) returns None: the caller reads it
with ``dcmread``, so every unusual file is read as before.

Measured in bench/bench_imaging.py (RESULTS.md, imaging section).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, BinaryIO

from pydicom.charset import default_encoding
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import data_element_generator

__all__ = ["read_header"]

_PREAMBLE = 128
_MAGIC = b"DICM"
_IMPLICIT_LE = b"1.2.840.10008.1.2"
_EXPLICIT_LE = b"1.2.840.10008.1.2.1"
_TRANSFER_SYNTAX = 0x00020010
_MEDIA_CLASS = 0x00020002
_DICOMDIR = b"1.2.840.10008.1.3.10"  # dcmread reads a DICOMDIR its own way
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # dcmread's stop


def _not_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _at_pixels(tag: int, vr: str | None, length: int) -> bool:
    return tag in _PIXEL_TAGS


def _vr_like(two: bytes) -> bool:
    """Whether two bytes read as an explicit VR (two upper-case letters)."""
    return len(two) == 2 and two.isalpha() and two.isupper()


def _uid(meta: Mapping[Any, object], tag: int) -> bytes | None:
    raw = meta.get(tag)
    value = getattr(raw, "value", None)
    return value.rstrip(b"\x00 ") if isinstance(value, bytes) else None


def read_header(fp: BinaryIO, defer_size: int) -> FileDataset | None:
    """The header of the Part 10 file in ``fp`` (positioned at its start) up to the
    pixel data, as ``dcmread(fp, stop_before_pixels=True, defer_size=defer_size)``
    reads it; None, with ``fp`` back at its start, when the file is not in the usual
    shape. Raises nothing of its own: a parse error is a None too."""
    head = fp.read(_PREAMBLE + 4 + 6)
    if (
        len(head) < _PREAMBLE + 10
        or head[_PREAMBLE : _PREAMBLE + 4] != _MAGIC
        or head[_PREAMBLE + 4 : _PREAMBLE + 6] != b"\x02\x00"
        or not _vr_like(head[_PREAMBLE + 8 : _PREAMBLE + 10])
    ):
        fp.seek(0)
        return None
    fp.seek(_PREAMBLE + 4)
    try:
        found = _read(fp, head[:_PREAMBLE], defer_size)
    except Exception:  # anything odd is dcmread's to read, and to report
        found = None
    if found is None:
        fp.seek(0)
    return found


def _read(fp: BinaryIO, preamble: bytes, defer_size: int) -> FileDataset | None:
    meta = {e.tag: e for e in data_element_generator(fp, False, True, _not_meta)}
    syntax = _uid(meta, _TRANSFER_SYNTAX)
    if syntax not in (_IMPLICIT_LE, _EXPLICIT_LE) or _uid(meta, _MEDIA_CLASS) == _DICOMDIR:
        return None
    implicit = syntax == _IMPLICIT_LE
    start = fp.tell()
    first = fp.read(6)
    fp.seek(start)
    if len(first) < 6 or first[:2] == b"\x00\x00":  # empty, or a command set
        return None
    if _vr_like(first[4:6]) == implicit:  # the VRs contradict the transfer syntax
        return None
    elements = data_element_generator(fp, implicit, True, _at_pixels, defer_size, default_encoding)
    raw = {e.tag: e for e in elements}  # EOFError (cut short): dcmread's to say
    file_meta = FileMetaDataset(meta)
    file_meta.set_original_encoding(False, True, default_encoding)
    # dcmread also decodes the meta's first element and Transfer Syntax UID while it
    # reads (30 µs a file); here they stay raw, as the rest: the same values on access.
    ds = FileDataset(fp, raw, preamble, file_meta, implicit, True)
    # As dcmread: Specific Character Set decoded (it is then a DataElement in the
    # dataset, not a raw one) and the dataset's encoding taken from it.
    ds.set_original_encoding(implicit, True, ds._character_set)
    return ds
