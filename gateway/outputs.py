"""Names of the files a command writes for its records (``gateway convert -o``,
``gateway demo``)."""

from __future__ import annotations

import hashlib
import re

__all__ = ["output_stem"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\-]+")
_MAX_STEM = 100  # characters (ASCII): far below every file system's 255-byte name limit


def output_stem(ident: str) -> str:
    """A file name stem for a record id (control id, document id, Study UID): the id
    itself when it is short and made of safe characters; otherwise its safe characters,
    shortened, and a hash of the whole id, so that ids differing only in unsafe or cut
    characters still get different names, and no id is too long for a file name."""
    # A CDA id (root^extension) keeps its form with _ for ^: the caret is the escape
    # character of Windows' cmd and must be quoted in shells and URLs.
    plain = ident.replace("^", "_")
    safe = _SAFE_NAME.sub("_", plain).strip("._-")
    if safe == plain and 0 < len(plain) <= _MAX_STEM:
        return plain
    digest = hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{safe[: _MAX_STEM - 17]}-{digest}" if safe else digest
