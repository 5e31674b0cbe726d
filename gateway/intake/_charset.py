"""Character sets: names used by senders → Python codecs, and strict decoding.

The table is data (``mappings/charsets/hl7v2.yaml``); this module only applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..datafiles import data_dir, load_data_file
from ..errors import IntakeError

__all__ = ["MULTI_BYTE", "Decoded", "codec_for", "decode_strict", "likely_cjk_charset"]


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    codec: str
    note: str | None = None  # a warning about how the bytes were decoded


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).upper()


@lru_cache(maxsize=1)
def _table() -> tuple[dict[str, str], dict[str, str], frozenset[str]]:
    raw = load_data_file(data_dir("mappings") / "charsets" / "hl7v2.yaml")
    codecs = {_norm(k): v for k, v in raw["codecs"].items()}
    refused = {_norm(k): v for k, v in raw.get("refused", {}).items()}
    return codecs, refused, frozenset(raw.get("single_byte", []))


def codec_for(name: str, *, location: str) -> str:
    """The Python codec for a declared character set name, or a clear error."""
    codecs, refused, _ = _table()
    key = _norm(name)
    if key in refused:
        raise IntakeError(
            "charset-unsupported",
            f"character set {name!r} is not supported: {refused[key]}",
            location=location,
        )
    try:
        return codecs[key]
    except KeyError:
        known = ", ".join(_table_names())
        raise IntakeError(
            "charset-unknown",
            f"unknown character set {name!r} (known: {known})",
            location=location,
        ) from None


@lru_cache(maxsize=1)
def _table_names() -> tuple[str, ...]:
    raw = load_data_file(data_dir("mappings") / "charsets" / "hl7v2.yaml")
    return tuple(raw["codecs"])


def decode_strict(data: bytes, codec: str, *, declared: str, location: str) -> Decoded:
    """Decode ``data``; a byte the codec cannot decode is an error that names its offset.

    A single-byte charset decodes any byte, so a UTF-8 message mislabelled as 8859/1
    would silently turn 王 into mojibake. When the bytes are valid multi-byte UTF-8,
    UTF-8 wins and the note says so.
    """
    _, _, single_byte = _table()
    if codec in single_byte and not data.isascii():
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return Decoded(
                text,
                "utf-8",
                f"declared {declared!r} but the bytes are UTF-8; decoded as UTF-8",
            )
    try:
        return Decoded(data.decode(codec), codec)
    except UnicodeDecodeError as exc:
        # The offset, not the bytes: they may be part of a patient's name.
        raise IntakeError(
            "charset-mismatch",
            f"bytes are not valid {declared} ({codec}): cannot decode the byte at {exc.start}",
            location=location,
            offset=exc.start,
        ) from None


# Multi-byte charsets whose bytes a single-byte declaration (or none) may be hiding, in
# the order tried when the sender's jurisdiction says nothing: UTF-8 first (its byte
# grammar is strict, so valid UTF-8 is rarely an accident), then the mainland's and
# Hong Kong's national charsets.
MULTI_BYTE = ("utf-8", "gb18030", "big5hkscs")


def _is_cjk(ch: str) -> bool:
    code = ord(ch)
    return (
        0x4E00 <= code <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= code <= 0x4DBF  # Extension A
        or 0x3000 <= code <= 0x303F  # CJK punctuation
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
    )


def likely_cjk_charset(data: bytes, prefer: tuple[str, ...] = MULTI_BYTE) -> str | None:
    """The multi-byte codec that ``data`` most likely is, when its non-ASCII bytes decode
    strictly in it to Chinese text; None when no candidate does (the bytes are then
    plausibly what a single-byte charset says they are).

    "Chinese text" means every non-ASCII character decoded is a CJK ideograph, CJK
    punctuation or a full-width form: Latin-1 accents decoded as GB 18030 give rare
    ideographs mixed with other blocks far more often than clean Chinese. ``prefer``
    orders the candidates (a Hong Kong sender's Big5 before GB 18030).
    """
    if data.isascii():
        return None
    for codec in prefer:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        wide = [ch for ch in text if not ch.isascii()]
        if wide and all(_is_cjk(ch) for ch in wide):
            return codec
    return None
