"""Text of a study whose bytes do not fit its Specific Character Set.

pydicom decodes text in the declared character set, and, without (0008,0005), as ISO
8859-1: GB 18030 bytes of 王 then come out as ``Íõ``, silently. Before a study is
mapped, every text value (SH, LO, ST, LT, UT, UC, PN, in sequence items too) with
non-ASCII bytes under an absent or single-byte character set is checked:

* absent (0008,0005) and a default ``charset`` for the sender in the network: the
  bytes are decoded in it (a warning says so), as MSH-18 empty is for HL7 v2;
* bytes that are Chinese text in UTF-8, GB 18030 or Big5-HKSCS
  (:func:`~gateway.intake._charset.likely_cjk_charset`) refuse the study, naming the
  tag and the likely charset, unless the sender's ``charset_mismatch`` is ``decode``
  (then they are decoded in that charset, with a warning naming the tag). Under a
  declared single-byte charset other than ISO_IR 6, values that read as ordinary
  words in it (Jérôme, Люксембург) are left alone: a sender that declares Latin-1 may
  well send Latin-1.

Values decoded here replace their raw elements, so the view reads them as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset, config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

from ...errors import IntakeError, Issue
from .._charset import MULTI_BYTE, likely_cjk_charset, mislabelled_as
from ._paths import tag_label
from ._terms import NAMES, declare_hint
from ._view import _element

__all__ = ["CharsetPolicy", "check_text", "single_byte_or_none"]

_CHARSET = 0x00080005
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_SPLIT_VRS = frozenset({"SH", "LO", "UC", "PN"})  # VM > 1 possible: '\' separates values
_NUMBERS = (6, 100, 101, 109, 110, 126, 127, 138, 144, 148, 166, 203)
_LATIN = (100, 101, 109, 110, 148, 203)
# Single-byte character sets (with or without code extensions): any byte decodes.
_SINGLE_BYTE = frozenset(
    {f"ISO_IR {n}" for n in _NUMBERS} | {f"ISO 2022 IR {n}" for n in _NUMBERS} | {""}
)
_LATIN_TERMS = frozenset({f"ISO_IR {n}" for n in _LATIN} | {f"ISO 2022 IR {n}" for n in _LATIN})
_DEFAULT_TERMS = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})
_WORD = re.compile(r"[^\W\d_]+")
_ESC = 0x1B
_INSTANCE = re.compile(r"series\[\d+\]/instance\[\d+\] ")


@dataclass(frozen=True, slots=True)
class CharsetPolicy:
    """What the sender's network entry says about its text."""

    facility: str | None = None
    default: str | None = None  # the network's charset name, e.g. "GB18030"
    default_codec: str | None = None  # its Python codec
    mismatch: str = "refuse"  # or "decode"
    prefer: tuple[str, ...] = MULTI_BYTE  # likely charsets, most likely first


def check_text(
    instances: list[tuple[Dataset, str]], policy: CharsetPolicy, notes: list[Issue]
) -> None:
    """Check (and where the policy says so, decode) the text of every instance; raise
    IntakeError ``charset-mismatch`` naming the first refused tag."""
    checker = _Checker(policy, notes)
    for ds, label in instances:
        checker.dataset(ds, f"{label} " if label else "", None)


def single_byte_or_none(ds: Dataset) -> bool:
    """Whether the dataset declares no character set or single-byte ones only."""
    terms = _terms(ds)
    return terms is None or all(t in _SINGLE_BYTE for t in terms)


def _terms(ds: Dataset) -> tuple[str, ...] | None:
    """The dataset's Specific Character Set terms; None when it has none."""
    elem = ds.get_item(_CHARSET, keep_deferred=True)
    value = elem.value if elem is not None else None
    if isinstance(value, bytes):  # not decoded yet: ASCII by the standard
        value = value.decode("ascii", "replace")
    if not value:
        return None
    if isinstance(value, str):
        items = value.split("\\")
    elif isinstance(value, (list, tuple, MultiValue)):
        items = list(value)
    else:  # a number where a code string belongs (DICOM JSON): one term, as text
        items = [value]
    terms = tuple(str(t).strip() for t in items)
    return terms if any(terms) else None


def _vr(elem: Any) -> str | None:
    """The element's VR; for implicit VR or UN (which pydicom converts to the
    dictionary's VR when it reads the value), the dictionary's."""
    if elem.VR and elem.VR != "UN":
        return str(elem.VR)
    try:
        return str(dictionary_VR(elem.tag))
    except KeyError:  # a private tag: not known to be text
        return str(elem.VR) if elem.VR else None


class _Checker:
    def __init__(self, policy: CharsetPolicy, notes: list[Issue]) -> None:
        self.policy = policy
        self.notes = notes
        self.seen: set[tuple[str, str]] = set()  # (code, tag path) already noted

    def dataset(self, ds: Dataset, prefix: str, inherited: tuple[str, ...] | None) -> None:
        """``prefix`` names where ``ds`` is: 'series[1]/instance[2] ' or
        '... (0008,1032) ProcedureCodeSequence[1] > '."""
        terms = _terms(ds) or inherited
        if terms is not None and not all(t in _SINGLE_BYTE for t in terms):
            return  # a multi-byte declaration: pydicom decodes it as declared
        for tag, elem in list(ds.items()):
            vr = _vr(elem)
            where = f"{prefix}{tag_label(tag)}"
            if isinstance(elem, RawDataElement):
                value = elem.value
                if value is None or value.isascii():
                    continue
                if vr == "SQ":
                    seq = _element(ds, tag, where)
                    self._items(seq.value if seq is not None else None, where, terms)
                elif vr in _TEXT_VRS and _ESC not in value:
                    self._text(ds, elem, value, vr, where, terms)
            elif vr == "SQ" and elem.value:  # read already (undefined length)
                self._items(elem.value, where, terms)

    def _items(self, items: Any, where: str, terms: tuple[str, ...] | None) -> None:
        for n, item in enumerate(items or (), 1):
            self.dataset(item, f"{where}[{n}] > ", terms)

    def _text(
        self,
        ds: Dataset,
        elem: RawDataElement,
        data: bytes,
        vr: str,
        label: str,
        terms: tuple[str, ...] | None,
    ) -> None:
        policy = self.policy
        if terms is None and policy.default_codec is not None:
            codec = policy.default_codec
            prefer = ("utf-8", codec, *(c for c in policy.prefer if c not in ("utf-8", codec)))
            # A multi-byte default is trusted unless the bytes are Chinese in another
            # charset; a single-byte one unless they read as Chinese (mislabelled_as).
            if codec in MULTI_BYTE:
                likely = likely_cjk_charset(data, prefer)
            else:
                likely = mislabelled_as(data, policy.prefer, codec)
            if likely is not None and likely != codec:
                what = f"{policy.default}, the configured charset of {policy.facility}"
                self._mismatch(ds, elem, data, vr, label, likely, what)
                return
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise IntakeError(
                    "charset-mismatch",
                    f"(0008,0005) SpecificCharacterSet is absent and the bytes are not valid "
                    f"{policy.default}, the configured charset of {policy.facility}: cannot "
                    f"decode the byte at {exc.start}; the sender should declare its character "
                    "set in (0008,0005), or the network name the one it sends",
                    location=label,
                ) from None
            ds[elem.tag] = _decoded(elem, vr, text)
            self._note(
                "intake.charset-default",
                "(0008,0005) SpecificCharacterSet is absent; text decoded with "
                f"{policy.default}, the configured charset of {policy.facility}",
                f"{_instance(label)}(0008,0005) SpecificCharacterSet",
            )
            return
        declared = [t for t in (terms or ()) if t not in _DEFAULT_TERMS]
        said = python_encoding.get(declared[0], "latin_1") if declared else None
        likely = mislabelled_as(data, policy.prefer, said)
        if likely is None:
            return  # not Chinese text in a likely charset: pydicom decodes it as declared
        if declared:
            what = f"(0008,0005) SpecificCharacterSet {declared[0]!r}"
        else:
            what = "ISO_IR 6 (ASCII), the default when (0008,0005) SpecificCharacterSet is absent"
        self._mismatch(ds, elem, data, vr, label, likely, what)

    def _mismatch(
        self,
        ds: Dataset,
        elem: RawDataElement,
        data: bytes,
        vr: str,
        label: str,
        likely: str,
        what: str,
    ) -> None:
        name = NAMES.get(likely, likely)
        if self.policy.mismatch != "decode":
            sender = self.policy.facility or "the sender"
            raise IntakeError(
                "charset-mismatch",
                f"the bytes are Chinese text in {name}, not {what}; the study is refused: "
                f"the sender should {declare_hint(likely)} (or set charset_mismatch: decode "
                f"for {sender} in the network to have them decoded as {name})",
                location=label,
            )
        ds[elem.tag] = _decoded(elem, vr, data.decode(likely))
        self._note(
            "intake.charset-mislabelled",
            f"declared {what} but the bytes are Chinese text in {name}; decoded as {name} "
            f"(the sender should {declare_hint(likely)})",
            label,
        )

    def _note(self, code: str, message: str, location: str) -> None:
        """Once per instance and tag path: the study's notes (StudyNotes) count the
        instances and keep one warning for them all."""
        if (code, location) in self.seen:
            return
        self.seen.add((code, location))
        self.notes.append(Issue(code, message, location=location, severity="warning"))


def _instance(label: str) -> str:
    """The instance part of a label (``series[1]/instance[2] ``), or ''."""
    match = _INSTANCE.match(label)
    return match.group(0) if match else ""


def _decoded(raw: RawDataElement, vr: str, text: str) -> DataElement:
    """The raw element as a decoded one: padding off, values split as pydicom does."""
    text = text.rstrip(" \x00")
    parts = text.split("\\") if vr in _SPLIT_VRS else [text]
    values: list[Any] = [
        PersonName(p, validation_mode=config.IGNORE) if vr == "PN" else p.strip() for p in parts
    ]
    value: Any = values[0] if len(values) == 1 else values
    return DataElement(raw.tag, vr, value, raw.value_tell, validation_mode=config.IGNORE)
