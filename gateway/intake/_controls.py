"""Control characters in a value read from HL7 v2 or DICOM: one rule for both views.

FHIR strings cannot carry control characters other than TAB, LF and CR. They reach a
value through an HL7 v2 ``\\Xhh\\`` escape or a stray byte (VT, FF, ESC, 0x1F). Where
the value is read (HL7 v2's terser path, DICOM's tag; docs/mapping-language.md,
docs/mapping-dicom.md):

- in a field that identifies a patient, an order, a study or the message
  (``mappings/identity-fields.yaml``) any control character fails the record: removed,
  ``009<0x1F>8765`` would become ``0098765``, perhaps another patient's MRN;
- elsewhere they are removed, with one warning ``intake.control-characters`` per
  location; a value of nothing but control characters carries no data and is read as
  absent, with a warning that says so (a garbled StudyDescription does not fail a study
  of 500 images, nor a garbled note an ORU). The fields that decide whose an identifier
  is (the sender: MSH-4, InstitutionName) are identifying: read as absent, the sender
  fell back to another (MSH-3, the accession number's issuer) and an MRN sent without
  its own issuer was read under that one's system.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import Issue
from ._identifying import identifying_error

__all__ = ["CONTROL", "EDGE_SPACES", "SPACED", "controls_removed", "stripped"]

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# The white space str.strip() takes that is neither SPACE nor a control character above
# (nor CR, LF: they end a segment; an escape gives LF): a TAB, NEL, a no-break space,
# the Unicode spaces and separators, the ideographic space. At an end of an identifying
# value it is part of the value (stripped(), below).
EDGE_SPACES = (
    "\t\x85\xa0\u1680"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + ("\u2028\u2029\u202f\u205f\u3000")
)
SPACED = re.compile(f"[{EDGE_SPACES}]")

_REMOVED = "control characters removed: FHIR strings cannot carry them"
_ABSENT = "the value holds only control characters, which FHIR strings cannot carry: read as absent"


def controls_removed(
    text: str,
    location: str,
    identifies: Callable[[str], bool],
    notes: list[Issue],
    warned: set[str],
    null: str | None = None,
) -> str:
    """``text`` (which holds a control character) without them, stripped; ``""`` when
    nothing else was there (or only the format's explicit ``null``, HL7 v2's ``""``).

    Raises the record's error when ``identifies(location)``. Otherwise warns in
    ``notes``, once per ``location``: ``warned`` holds the locations already warned
    (one set per view, beside the list its warnings go to)."""
    if identifies(location):  # removed, 009\x1f8765 would be another MRN
        raise identifying_error(location)
    kept = CONTROL.sub("", text).strip()
    if kept == null:
        kept = ""
    if location not in warned:
        warned.add(location)
        notes.append(
            Issue(
                "intake.control-characters",
                _REMOVED if kept else _ABSENT,
                location=location,
                severity="warning",
            )
        )
    return kept


_EDGES = (
    "white space other than padding spaces (a TAB, LF, a no-break or ideographic space) at an end"
)


def stripped(text: str, location: str, identifies: Callable[[str], bool]) -> str:
    """``text.strip()``; but in an identifying field only SPACE is padding: a TAB, a
    no-break or an ideographic space (U+3000) at an end is part of the value, so
    ``0012345<TAB>`` and ``0012345`` are two patients in one DICOM study (its one-patient
    check). Stripped, a study of one instance filed 0012345<TAB> as MRN 0012345, and HL7 v2's PID-3
    ``P1<TAB>`` was MRN ``P1``: the record's error instead. Asked only when ``strip()``
    took more than spaces (rare)."""
    out = text.strip()
    if len(out) != len(text) and out != text.strip(" ") and identifies(location):
        raise identifying_error(location, _EDGES)
    return out
