"""DICOM look-ups for the mapping engine: a study as a small tree of nodes.

The study node stands for all the study's instances (an attribute read there is the
first non-empty value among them, in series and instance order); its children are the
series (by SeriesNumber, then UID), theirs the instances (by InstanceNumber, then UID).
``each`` over an attribute gives value nodes (one per value) or, for a sequence, item
nodes. The path grammar is in ``_paths.py`` and docs/mapping-dicom.md.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ...errors import IntakeError, Issue
from .._charset import likely_cjk_charset
from .._controls import CONTROL, controls_removed, stripped
from .._identifying import dicom_identifies
from ._faults import PYDICOM_FAULTS
from ._paths import ALL, Path, Step, compile_path, tag_label
from ._scope import quiet_pydicom
from ._terms import NAMES, declare_hint

__all__ = ["DicomView", "Node"]


@dataclass(frozen=True, slots=True, eq=False)
class Node:
    """Where the engine stands: a level of the study, a sequence item or one value."""

    level: str  # study, series, instance, item, value
    datasets: tuple[Dataset, ...]  # where attribute paths look (first non-empty wins)
    label: str = ""  # "series[2]/instance[3]": prefix of error locations
    children: tuple[Node, ...] = ()  # study → series, series → instances
    value: Any = None  # value nodes: the value (str, PersonName, ...)
    vr: str = ""


_FRACTION = re.compile(r"(\.\d{1,4})\d+")
_NO_TEXT = (bytes, bytearray, memoryview, Dataset)
# Attributes intake itself reads (charset, UIDs, the sender): mapped, when tracing.
_INTAKE_TAGS = frozenset({0x00080005, 0x0020000D, 0x0020000E, 0x00080018, 0x00080080})
_PIXEL_DATA = 0x7FE00010
# VRs that hold text: a standard attribute of one of these sent with another VR (a
# PatientName as US) has no text to give, only numbers or bytes.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI"}
    | {"UR", "UT"}
)


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, (str, bytes, MultiValue, list)):
        return len(value) == 0
    if isinstance(value, PersonName):
        return not str(value).strip("=^ ")
    return False


def _pick(seq: list[Any], index: int, every: bool) -> list[tuple[int, Any]]:
    """(1-based position, item) chosen by a step's index: all, the n-th or the first."""
    if index == ALL or (index == 0 and every):
        return list(enumerate(seq, 1))
    n = index or 1
    return [(n, seq[n - 1])] if n <= len(seq) else []


def _text_of(
    value: Any, vr: str, p: Path, label: str, notes: list[Issue], warned: set[str] | None = None
) -> str | None:
    """One DICOM value as text: PN groups/parts, dates and times in DTM form; control
    characters removed with a warning in ``notes`` naming ``label`` (once per label in
    ``warned``), a value of nothing else read as absent, as HL7 v2's view does
    (gateway/intake/_controls.py)."""
    if isinstance(value, _NO_TEXT):
        return None
    if vr == "PN" or isinstance(value, PersonName):
        text = _pn_text(value, p.pn_group, p.pn_part)
    else:
        text = str(value)
        if vr == "TM":  # ACR-NEMA colons out; FHIR needs no more than 4 fraction digits
            text = _FRACTION.sub(r"\1", text.replace(":", ""))
        elif vr == "DT":
            text = _FRACTION.sub(r"\1", text)
        elif vr == "DA":
            text = text.replace(".", "")  # ACR-NEMA YYYY.MM.DD
    # Trailing NULs are padding (devices pad codes, and empty values, as UIDs are):
    # pydicom leaves them on a CS value, and none is a control character sent
    text = text.rstrip("\x00 ")
    if CONTROL.search(text):
        if vr == "UI":  # removed, 1.2.3\x01.4 would name another UID (1.2.3.4)
            raise IntakeError(
                "dicom-bad-value",
                f"{label} is not a DICOM UID: it holds a control character, without "
                "which it would name another UID",
                location=label,
            )
        warned = set() if warned is None else warned
        text = controls_removed(text, label, dicom_identifies, notes, warned)
    return stripped(text, label, _compared) or None


def _compared(label: str) -> bool:
    """Identifying and compared as sent (PatientID, an issuer, AccessionNumber ...): a
    TAB or ideographic space at an end is part of it. Not InstitutionName, which is
    looked up by name: padded so, it names no other sender."""
    return dicom_identifies(label) and not label.endswith(" InstitutionName")


def _pn_text(value: Any, group: int, part: int) -> str:
    pn = value if isinstance(value, PersonName) else PersonName(str(value))
    if group < 0:
        text = str(pn)
        return text if text.strip("=^ ") else ""  # '^^^^' is an empty name
    groups = pn.components
    text = groups[group] if group < len(groups) else ""
    if part < 0:
        return text if text.strip("^ ") else ""
    parts = text.split("^")
    return parts[part] if part < len(parts) else ""


class DicomView:
    """Answers path look-ups for one study; the mapping engine's window on it."""

    kind = "dicom"
    memo = False  # nodes have no text of their own: the fragment memo steps aside

    def __init__(
        self,
        study: Node,
        sender: str | None = None,
        charset: str | None = None,
        find: Callable[[str], str | None] | None = None,
    ) -> None:
        self.root = study
        self.sender = sender
        self.charset = charset
        self._find = find or (lambda name: None)
        self._read: set[int] | None = None
        self._cache: dict[tuple[str, int], str | None] = {}
        # Warnings found while the mapping reads values; the reader points this at the
        # study's own issues, which the pipeline adds to the record after mapping.
        self.notes: list[Issue] = []
        self._warned: set[str] = set()  # the locations warned of: one warning each

    # -- tracing -------------------------------------------------------------------------
    @property
    def tracing(self) -> bool:
        return self._read is not None

    def trace(self) -> None:
        """Start recording which attributes are read (see :meth:`unmapped`)."""
        self._read = set(_INTAKE_TAGS)
        self._cache.clear()

    def unmapped(self) -> list[str]:
        """Standard attributes holding data that nothing read, e.g.
        ``['(0008,0070) Manufacturer']``. Needs :meth:`trace` before the mapping ran."""
        read = self._read or set()
        present: set[int] = set()
        for ds in self.root.datasets:
            for tag in list(ds.keys()):  # tags only: iterating ds would decode every value
                if tag in present or tag in read or tag.is_private or tag.element == 0:
                    continue
                if tag.group == 0x0002 or tag == _PIXEL_DATA:
                    continue
                if _has_data(ds, tag):
                    present.add(tag)
        return [tag_label(t) for t in sorted(present)]

    # -- look-ups ------------------------------------------------------------------------
    def select(self, path: str, here: Node) -> list[Node]:
        """Series or instance nodes, sequence items, or value nodes at ``path``."""
        p = compile_path(path)
        start = self.root if p.root else here
        if p.kind == "nav":
            return self._navigate(p.name, start)
        if p.kind == "self":
            return [here] if here.level == "value" else []
        if p.kind != "attr":
            text = self.first(path, here)
            return (
                [Node("value", start.datasets, self.label(path, here), value=text)] if text else []
            )
        nodes: list[Node] = []
        seen: set[str] = set()
        for value, vr, label in self._hits(p, start, every=True):
            if vr == "SQ":
                nodes.append(Node("item", (value,), label))
                continue
            key = str(value)
            if key in seen or _text_of(value, vr, p, label, self.notes, self._warned) is None:
                continue
            seen.add(key)
            nodes.append(Node("value", start.datasets, label, value=value, vr=vr))
        return nodes

    def values(self, path: str, here: Node) -> list[tuple[str, str]]:
        """Every non-empty (value, location) at ``path``: one unless a step says ``[*]``
        (then each distinct value of every instance of the level)."""
        p = compile_path(path)
        if p.kind != "attr":
            text = self.first(path, here)
            return [(text, self.label(path, here))] if text else []
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        start = self.root if p.root else here
        for value, vr, label in self._hits(p, start, every=p.every):
            text = self._finish(_text_of(value, vr, p, label, self.notes, self._warned), p)
            if text is not None and text not in seen:
                seen.add(text)
                out.append((text, label))
                if not p.every:
                    break
        return out

    def first(self, path: str, here: Node) -> str | None:
        """The first non-empty value at ``path`` (no location labels built)."""
        cacheable = here.level in ("study", "series") and self._read is None
        if cacheable:
            key = (path, id(here))
            if key in self._cache:
                return self._cache[key]
        found = self._first(compile_path(path), here)
        if cacheable:
            self._cache[key] = found
        return found

    def _first(self, p: Path, here: Node) -> str | None:
        start = self.root if p.root else here
        if p.kind == "attr":
            for value, vr, label in self._hits(p, start, every=p.every):
                text = self._finish(_text_of(value, vr, p, label, self.notes, self._warned), p)
                if text is not None:
                    return text
            return None
        if p.kind == "concat":
            texts = [self._first(part, here) for part in p.parts]
            return "".join(t for t in texts if t) if texts and texts[0] else None
        if p.kind == "self":
            if here.level != "value":
                return None
            return self._finish(
                _text_of(here.value, here.vr, p, here.label, self.notes, self._warned), p
            )
        if p.kind == "fact":
            return self._fact(p.name, start)
        return None

    def label(self, path: str, here: Node) -> str:
        """The location ``path`` denotes from ``here``: '(0010,0010) PatientName',
        'series[2] (0008,0060) Modality' (for error messages)."""
        p = compile_path(path)
        if p.kind == "concat":
            return " + ".join(self.label(part.text, here) for part in p.parts)
        prefix = "" if p.root else here.label
        if p.kind == "self":
            return here.label
        if p.kind != "attr":
            return f"{prefix} {p.name}".strip()
        steps = " > ".join(s.label for s in p.steps)
        return f"{prefix} {steps}".strip()

    # -- internals -------------------------------------------------------------------------
    def _navigate(self, name: str, start: Node) -> list[Node]:
        if name == "series":
            return list(self.root.children)
        if start.level == "study":
            return [i for s in start.children for i in s.children]
        if start.level == "series":
            return list(start.children)
        return [start] if start.level == "instance" else []

    def _fact(self, name: str, start: Node) -> str | None:
        if name == "@sender":
            return self.sender
        if name == "@charset":
            return self.charset
        if name == "@series-count":
            return str(len(self.root.children))
        if start.level == "study":
            return str(sum(len(s.children) for s in start.children))
        if start.level == "series":
            return str(len(start.children))
        return "1" if start.level == "instance" else None

    def _finish(self, text: str | None, p: Path) -> str | None:
        if text is not None and p.facility:
            return self._find(text) or text
        return text

    def _hits(self, p: Path, start: Node, every: bool) -> list[tuple[Any, str, str]]:
        """(value, VR, location) found at ``p``: from the first dataset of the level that
        has any, or from every dataset when the path says ``[*]``."""
        out: list[tuple[Any, str, str]] = []
        for ds in start.datasets:
            found = self._walk(ds, p.steps, 0, start.label, every)
            if found:
                if not p.every:
                    return found
                out.extend(found)
        return out

    def _walk(
        self, ds: Dataset, steps: tuple[Step, ...], i: int, label: str, every: bool
    ) -> list[tuple[Any, str, str]]:
        step = steps[i]
        if i == 0 and self._read is not None:
            self._read.add(step.tag)
        here = f"{label} > {step.label}" if i else f"{label} {step.label}".strip()
        elem = _element(ds, step.tag, here, self.notes)
        if elem is None:
            return []
        value, vr = elem.value, elem.VR
        if step.vr in _TEXT_VRS and vr not in _TEXT_VRS:
            raise IntakeError(
                "dicom-bad-vr",
                f"{here} is sent with VR {vr}, which cannot hold its text (VR {step.vr}); "
                "the value is not read",
                location=here,
            )
        last = i == len(steps) - 1
        if vr == "SQ":
            items = list(value or ())
            chosen = _pick(items, step.index, every and last)
            if last:
                return [(item, "SQ", f"{here}[{n}]") for n, item in chosen]
            out: list[tuple[Any, str, str]] = []
            for n, item in chosen:
                out += self._walk(item, steps, i + 1, f"{here}[{n}]", every)
            return out
        if not last or _empty(value):
            return []
        many = isinstance(value, MultiValue)
        values = list(value) if many else [value]
        chosen = _pick(values, step.index, every)
        if vr in _INTEGER_VRS:
            for _, v in chosen:
                _check_integer(v, vr, here)
        return [
            (v, vr, f"{here}[{n}]" if many and len(values) > 1 else here)
            for n, v in chosen
            if not _empty(v)
        ]


# Integer VRs, and the range of FHIR integer/unsignedInt/positiveInt (32-bit signed):
# a larger IS (1e308, 999999999999) fails far later as a Bundle structure error.
_INTEGER_VRS = frozenset({"IS", "US", "UL", "SS", "SL", "UV", "SV"})
_FHIR_INT_MIN, _FHIR_INT_MAX = -(2**31), 2**31 - 1


def _check_integer(value: Any, vr: str, label: str) -> None:
    """Refuse an integer FHIR cannot hold, naming the tag, never the value."""
    try:
        number = int(float(str(value))) if vr == "IS" else int(value)
    except (TypeError, ValueError, OverflowError):
        return  # not a number at all: the mapping's conversion reports it
    if not _FHIR_INT_MIN <= number <= _FHIR_INT_MAX:
        raise IntakeError(
            "dicom-bad-value",
            f"{label} holds a number ({vr}) out of range for a FHIR integer or "
            f"unsignedInt ({_FHIR_INT_MIN}..{_FHIR_INT_MAX})",
            location=label,
        )


@dataclass(frozen=True, slots=True)
class _Plain:
    """A single ASCII value read straight from its bytes (see ``_element``)."""

    VR: str
    value: str


# VRs whose values are ASCII by the standard and need no charset: UIDs, codes, dates
# and times. pydicom's general conversion (and the warnings guard around it) costs
# several times more, and these are most of what a study's mapping reads.
_ASCII_VRS = frozenset({"UI", "CS", "DA", "TM", "DT", "AS"})
_UNDEFINED = 0xFFFFFFFF
_PLAIN_IS = re.compile(rb" *[+-]?[0-9]{1,12} *")  # one value: IS allows 12 characters


def _element(
    ds: Dataset, tag: int, label: str, notes: list[Issue] | None = None
) -> DataElement | _Plain | None:
    """The element at ``tag``, decoded on first use. pydicom warns when bytes do not
    decode in the charset (it then uses U+FFFD): that becomes a warning in ``notes``
    (the record's issues). A value its VR cannot hold is the record's error. Both are
    named by tag, never by value."""
    raw = ds.get_item(tag, keep_deferred=True)
    if raw is None or not isinstance(raw, RawDataElement):
        return raw
    if raw.value is None and raw.length and raw.length != _UNDEFINED:
        # Skipped unread (beyond dicom_max_element_bytes): pydicom would try to reopen
        # the file by name to read it now.
        raise IntakeError(
            "dicom-too-large",
            f"{label} holds {raw.length} bytes, more than the gateway reads "
            "(dicom_max_element_bytes); it was skipped unread",
            location=label,
        )
    if raw.VR in _ASCII_VRS and raw.value is not None:
        try:
            text = raw.value.decode("ascii")
        except UnicodeDecodeError:
            pass  # not what the VR allows: pydicom's conversion decides
        else:
            text = text.rstrip("\x00 ") if raw.VR == "UI" else text.strip(" ")
            if "\\" not in text:  # several values: pydicom's MultiValue
                return _Plain(raw.VR, text)
    elif raw.VR == "IS" and raw.value is not None and _PLAIN_IS.fullmatch(raw.value):
        # An ordinary integer string (InstanceNumber, SeriesNumber): pydicom's IS
        # reads as this text too (str() gives the string as sent, spaces stripped).
        return _Plain("IS", raw.value.decode("ascii").strip(" "))
    try:
        with quiet_pydicom(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            elem = ds[tag]
    except PYDICOM_FAULTS:  # a value its VR cannot hold
        raise IntakeError(
            "dicom-bad-value",
            f"{label} holds a value its VR ({raw.VR}) cannot hold",
            location=label,
        ) from None
    undecodable = any("decode" in str(w.message) for w in caught)
    if undecodable and raw.VR == "PN":
        # A person's name with characters replaced is another name: never forwarded
        # (as mislabelled text is refused: intake.charset-mismatch).
        raise IntakeError(
            "dicom-name-undecodable",
            f"{label}: a person's name whose bytes do not decode in the study's Specific "
            f"Character Set {_declared(ds)}(characters would be replaced by U+FFFD)"
            f"{_undecodable_hint(raw.value)}",
            location=label,
        )
    if notes is not None and undecodable:
        note = Issue(
            "intake.dicom-undecodable",
            "bytes that do not decode in the study's Specific Character Set "
            f"{_declared(ds)}were replaced by U+FFFD{_undecodable_hint(raw.value)}",
            location=label,
            severity="warning",
        )
        if note not in notes:
            notes.append(note)
    return elem


def _declared(ds: Dataset) -> str:
    """(0008,0005) as the dataset declares it, for a message (terms are code strings)."""
    raw = ds.get_item(0x00080005, keep_deferred=True)
    value = raw.value if raw is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (list, MultiValue)):
        value = "\\".join(str(v) for v in value)
    text = str(value or "").strip(" \x00")[:64]
    return f"(0008,0005) {text!r} " if text else ""  # absent in an item: its parent's


def _undecodable_hint(data: Any) -> str:
    """What the sender should declare when the bytes are Chinese text in another charset
    (GB 18030 declared ISO_IR 192, UTF-8 declared GB18030): the value is never quoted."""
    likely = likely_cjk_charset(data) if isinstance(data, bytes) else None
    if likely is None:
        return ""
    name = NAMES.get(likely, likely)
    return f"; the bytes read as {name}: the sender should {declare_hint(likely)}"


def _has_data(ds: Dataset, tag: Any) -> bool:
    # Not decoded (tracing must not cost a full conversion), nor read if skipped unread.
    raw = ds.get_item(tag, keep_deferred=True)
    if raw is None:
        return False
    if isinstance(raw, RawDataElement):
        return bool(raw.length)
    return not _empty(raw.value)
