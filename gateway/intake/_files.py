"""How messages name an input file: by a short hash of its name, never the name.

File names from modalities and exports often hold the patient's name or MRN
(``CHAN_TAI_MAN_A1234567.dcm``, ``陈大文.dcm``, ``CHAN^TAI MAN/IM0001``), and an intake
message goes into the record's OperationOutcome, the message store and the logs. A file
is named ``file 1a2b3c4d``: the first 8 hex digits of the SHA-256 of its name as the
reader was given it (the path as typed or found in the folder; ``archive.zip/member``
for an archive's member; ``doc.json[2]`` for a DICOM JSON document's second object).
``gateway convert`` prints the path beside the reference on its own output, where the
operator typed it; anyone else can find the file by hashing the names they hold
(``printf '%s' NAME | sha256sum``)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping

__all__ = ["file_ref", "with_paths"]

_REF = re.compile(r"\bfile ([0-9a-f]{8})\b")


def file_ref(name: str) -> str:
    """``file <8 hex digits>``: the reference a message gives the file ``name``."""
    return "file " + hashlib.sha256(_raw(name)).hexdigest()[:8]


def _raw(name: str) -> bytes:
    """The name's bytes as the file system holds them, so ``sha256sum`` of the name finds
    the file: a name that is not UTF-8 (GB 18030 陈大文.dcm) came as surrogate escapes
    (os.fsdecode), which surrogatepass would hash as other bytes. Any other lone
    surrogate still hashes."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogatepass")


def with_paths(line: str, names: Iterable[str] | Mapping[str, str]) -> str:
    """``line`` with each reference to one of ``names`` followed by that name (a mapping:
    by its value, the path the operator gave for the name the reader hashed): for the
    operator's own terminal, who gave the names."""
    if "file " not in line:
        return line
    # 8 hex digits collide about once in 77 000 names: a batch that large may hold two
    # files of one reference, and each must be shown, not whichever was listed last
    pairs = names if isinstance(names, Mapping) else {n: n for n in names}
    known: dict[str, list[str]] = {}
    for n, path in pairs.items():
        known.setdefault(file_ref(n)[5:], []).append(path)

    def named(m: re.Match[str]) -> str:
        found = known.get(m[1])
        return f"{m[0]} ({' or '.join(found)})" if found else m[0]

    return _REF.sub(named, line)
