"""Intake stage: bytes → parsed records (format detection, charsets, readers)."""

from ._charset import codec_for, decode_strict
from ._detect import FORMATS, detect_format
from ._files import file_ref, with_paths
from ._unit import MemoView, RecordView, Unit

__all__ = [
    "FORMATS",
    "MemoView",
    "RecordView",
    "Unit",
    "codec_for",
    "decode_strict",
    "detect_format",
    "file_ref",
    "with_paths",
]
