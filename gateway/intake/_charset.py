"""Character sets: names used by senders → Python codecs, and strict decoding.

The table is data (``mappings/charsets/hl7v2.yaml``); this module only applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from ..datafiles import data_dir, load_data_file
from ..errors import IntakeError

__all__ = ["Decoded", "codec_for", "decode_strict"]


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
