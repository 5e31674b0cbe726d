"""The fields that identify a patient, an order, a study or a message
(``mappings/identity-fields.yaml``): a control character in one of them fails the
record, where elsewhere it is removed with a warning. Removed, ``009<0x1F>8765`` would
become ``0098765``, which may be another patient's MRN; so does a TAB, LF or
ideographic space at an end of one (trimmed, ``0098765<TAB>`` was MRN ``0098765``).
Asked only once a control character, or such a space, has been found in the message
(never on the hot path)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pydicom.datadict import tag_for_keyword

from ..datafiles import data_dir, load_data_file
from ..errors import ConfigError, IntakeError

__all__ = [
    "dicom_identifies",
    "hl7_fields",
    "hl7_identifies",
    "hl7_identifies_where",
    "hl7_text",
    "identifying_error",
]

# 'PID-3.1', 'PID(2)-3(2).4', 'ORC-2': the segment and field of an HL7 v2 view's label
_HL7_FIELD = re.compile(r"(([A-Z][A-Z0-9]{2})(?:\(\d+\))?)-(\d+)")
_SEG_FIELD = re.compile(r"[A-Z][A-Z0-9]{2}-\d+")
_WHERE_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-\d+(?:\.\d+){0,2}")
# 'OBX-3.2', 'ORC-12.2', 'OBR-32.1.2': a component (or subcomponent) of a field
_SEG_PART = re.compile(r"[A-Z][A-Z0-9]{2}-\d+\.\d+(?:\.\d+)?")
# a view's label down to its subcomponent: 'OBX(2)-3(1).2' -> OBX, 3, 2, None
_HL7_PART = re.compile(r"([A-Z][A-Z0-9]{2})(?:\(\d+\))?-(\d+)(?:\(\d+\))?(?:\.(\d+))?(?:\.(\d+))?")
# '(0010,0020) PatientID', 'series[1] > (0040,A370) … > (0008,0050) …': the last tag
_LAST_TAG = re.compile(r"\(([0-9A-F]{4}),([0-9A-F]{4})\)(?!.*\([0-9A-F]{4},)")


@dataclass(frozen=True, slots=True)
class _Where:
    """SEG-N identifying when the same segment's component ``where`` (``3.1``) is one of
    ``values``: OBX-5 is a Study Instance UID in the OBX coded 113014, text elsewhere."""

    where: str  # 'OBX-3.1', read in the segment of the value
    values: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Fields:
    hl7v2: frozenset[str]  # 'PID-3'
    dicom: frozenset[int]  # tags
    hl7v2_where: dict[str, _Where]  # 'OBX-5' -> its condition
    # the fields of both, by segment: {'PID': (2, 3, 4, ...), 'OBX': (3, 5, 23)}
    by_segment: dict[str, tuple[int, ...]]
    # names and display texts inside those fields ('OBX-3.2', 'ORC-12.2'), where a TAB
    # or an ideographic space at an end is padding, as anywhere else
    hl7v2_text: frozenset[str] = frozenset()


@lru_cache(maxsize=1)
def _fields() -> _Fields:
    path = data_dir("mappings") / "identity-fields.yaml"
    raw = load_data_file(path)
    try:
        hl7 = frozenset(str(f) for f in raw["hl7v2"])
        keywords = [str(k) for k in raw["dicom"]]
        where = _where(raw.get("hl7v2-where") or [])
        text = frozenset(str(f) for f in raw.get("hl7v2-text") or [])
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            "identity-fields",
            f"{path}: expected lists hl7v2 (SEG-N), dicom (keywords) and, optionally, "
            f"hl7v2-where ({{field: SEG-N, where: SEG-N.C, in: [values]}}) and hl7v2-text "
            f"(SEG-N.C[.S]) ({exc})",
        ) from None
    bad = [f for f in hl7 if not _SEG_FIELD.fullmatch(f)]
    for field, cond in where.items():
        m = _WHERE_PATH.fullmatch(cond.where)
        if not _SEG_FIELD.fullmatch(field) or m is None or m[1] != field[:3]:
            bad.append(f"{field} where {cond.where}")  # the condition is read in its segment
    bad += [f"{f} (hl7v2-text)" for f in text if not _SEG_PART.fullmatch(f)]
    outside = [f for f in text if f.split(".")[0] not in hl7]
    bad += [f"{f} (hl7v2-text, not in an identifying field)" for f in outside]
    tags = {k: tag_for_keyword(k) for k in keywords}
    bad += [k for k, tag in tags.items() if tag is None]
    if bad:
        raise ConfigError(
            "identity-fields",
            f"{path}: not an HL7 v2 field (SEG-N) nor a DICOM keyword: {', '.join(sorted(bad))}",
        )
    by_segment: dict[str, list[int]] = {}
    for name in sorted(hl7 | where.keys(), key=lambda f: (f[:3], int(f[4:]))):
        by_segment.setdefault(name[:3], []).append(int(name[4:]))
    return _Fields(
        hl7,
        frozenset(t for t in tags.values() if t is not None),
        where,
        {segment: tuple(numbers) for segment, numbers in by_segment.items()},
        text,
    )


def _where(entries: list[dict[str, object]]) -> dict[str, _Where]:
    out = {}
    for entry in entries:
        values = entry["in"]
        if not isinstance(values, list):
            raise TypeError(f"'in' of {entry['field']} is not a list")
        out[str(entry["field"])] = _Where(str(entry["where"]), frozenset(str(v) for v in values))
    return out


def hl7_fields() -> dict[str, tuple[int, ...]]:
    """The identifying HL7 v2 fields by segment (``{'PID': (2, 3, 4, ...)}``), those that
    identify in some segments only (OBX-5) among them: ask :func:`hl7_identifies` (and
    :func:`hl7_identifies_where`) of a value found in one."""
    return _fields().by_segment


def hl7_identifies(label: str) -> bool:
    """Whether an HL7 v2 view's location (``PID-3(2).1``) is in an identifying field."""
    m = _HL7_FIELD.match(label)
    return m is not None and f"{m[2]}-{m[3]}" in _fields().hl7v2


def hl7_text(label: str) -> bool:
    """Whether an HL7 v2 view's location (``OBX(2)-3.2``, ``OBR-32.1.2``) is a name or a
    display text inside an identifying field (``hl7v2-text``): white space at its ends
    is padding there, as anywhere else; a control character still fails the record."""
    m = _HL7_PART.match(label)
    if m is None or m[3] is None:
        return False
    text = _fields().hl7v2_text
    part = f"{m[1]}-{m[2]}.{m[3]}"
    return part in text or (m[4] is not None and f"{part}.{m[4]}" in text)


def hl7_identifies_where(label: str) -> tuple[str, frozenset[str]] | None:
    """For a location in a field that identifies in some segments only (OBX-5): the
    terser path to read in the same segment (``/OBX(2)-3.1``) and the values that make
    it identifying; else None."""
    m = _HL7_FIELD.match(label)
    cond = _fields().hl7v2_where.get(f"{m[2]}-{m[3]}") if m is not None else None
    if m is None or cond is None:
        return None
    return f"/{m[1]}-{cond.where.split('-', 1)[1]}", cond.values


def dicom_identifies(label: str) -> bool:
    """Whether a DICOM view's location names an identifying attribute (its last tag)."""
    m = _LAST_TAG.search(label)
    return m is not None and (int(m[1], 16) << 16 | int(m[2], 16)) in _fields().dicom


def identifying_error(label: str, what: str = "control characters") -> IntakeError:
    return IntakeError(
        "control-characters",
        f"{what} in an identifying field: removed, they would leave another "
        "identifier (perhaps another patient's or record's), so the record is refused; "
        "the sender must correct it",
        location=label,
    )
