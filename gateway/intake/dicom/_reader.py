"""DICOM reader: Part 10 files, zip archives of them and DICOM JSON → one Unit per study.

Instances are grouped by Study Instance UID across every item of a batch (a study's
files may come from a folder, an archive and loose files at once). Only headers are
read (``stop_before_pixels``), and elements larger than ``max_element_bytes`` are
skipped unread (counted in a warning).

All or nothing: a study is converted only when every instance that may belong to it
was read whole. An instance that cannot be read, is cut short or is damaged in its
archive fails its study (or, when its Study Instance UID cannot be read, every study
of its archive, JSON document or folder), naming the file or member; a study is never
converted with a part of its instances. Its instances must name one patient
(PatientID and IssuerOfPatientID), one order (AccessionNumber and its issuer) and one
sender (InstitutionName). A file that is not DICOM, or a readable DICOM
object without Study Instance UID that concerns no study, is an error record of its
own; neither stops the other studies.
"""

from __future__ import annotations

import io
import lzma
import re
import struct
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from pydicom import Dataset, dcmread
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag

from ...errors import GatewayError, IntakeError, Issue
from ...network import Network
from .._charset import MULTI_BYTE, codec_for, likely_cjk_charset
from .._controls import CONTROL, stripped
from .._files import file_ref
from .._identifying import identifying_error
from .._unit import Unit
from ._charsets import CharsetPolicy, check_text, single_byte_or_none
from ._fastread import read_header
from ._faults import ARCHIVE_FAULTS, PYDICOM_FAULTS
from ._notes import StudyNotes
from ._paths import tag_label
from ._scope import no_gc, quiet_pydicom
from ._view import DicomView, Node, _element

__all__ = [
    "MAX_ELEMENT_BYTES",
    "MAX_MEMBERS",
    "MAX_MEMBER_BYTES",
    "MAX_SEQUENCE_DEPTH",
    "MAX_TOTAL_BYTES",
    "check_instance",
    "read_studies",
    "sent_uid",
    "uid_problem",
]

# Zip-bomb guards. Members are streamed and read only up to the pixel data, but their
# declared sizes still bound what an archive may claim (zipfile enforces them).
MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 2 << 30  # one file of an archive
MAX_TOTAL_BYTES = 32 << 30  # all files of an archive
MAX_JSON_BYTES = 256 << 20  # a DICOM JSON member is read whole
# Elements beyond this many bytes (private blobs, encapsulated documents) are skipped
# unread: the setting dicom_max_element_bytes (docs/configuration.md).
MAX_ELEMENT_BYTES = 1 << 20
# Sequences nest a dozen levels in real objects (SR content trees, RT structure sets);
# pydicom reads them and the view walks them recursively, so a hostile file nesting a
# few hundred levels would overflow Python's stack and fail the whole batch with it.
MAX_SEQUENCE_DEPTH = 64
_MAX_RATIO = 200  # uncompressed/compressed beyond 1 MiB: pixel data never packs that well
_RATIO_FLOOR = 1 << 20
_DRAIN = 1 << 20  # bytes per read when a member is read to its end (for its CRC)

_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018
_PATIENT_ID, _ISSUER = 0x00100020, 0x00100021
# IssuerOfPatientIDQualifiersSequence and its UniversalEntityID (the issuer's OID): the
# mapping takes the issuer from there too, so two instances must agree on it as well.
_QUALIFIERS, _UNIVERSAL_ID = 0x00100024, 0x00400032
# What joins the ImagingStudy to its order (ServiceRequest, by identifier): the
# accession number and IssuerOfAccessionNumberSequence's first item.
_ACCESSION, _ACCESSION_ISSUER = 0x00080050, 0x00080051
_LOCAL_ID, _UID_TYPE = 0x00400031, 0x00400033
_CHARSET = 0x00080005
_INSTITUTION = 0x00080080
_DICOMDIR = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: no instance
_DEFLATED = "1.2.840.10008.1.2.1.99"
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ITEM, _SEQ_END = 0xFFFEE000, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNSAFE = re.compile(r"[^\w.\-/ #()\[\]+]")


def _safe(name: str) -> str:
    """A text that is no file name (a JSON key, a charset term, a library's words) fit
    for a message: no markup or control characters, bounded. A file is named by
    ``file_ref`` (its name may name the patient)."""
    cleaned = _UNSAFE.sub("_", name)
    return cleaned if len(cleaned) <= 160 else "…" + cleaned[-159:]


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def _why(exc: BaseException) -> str:
    """What a zip or codec error says, its quoted parts left out: zipfile's messages hold
    no file content but quote member names ("Bad CRC-32 for file 'CHAN_TAI_MAN.dcm'")."""
    text = _QUOTED.sub("'…'", str(exc).splitlines()[0])[:120] if str(exc) else ""
    return f"{type(exc).__name__}: {_safe(text)}" if text else type(exc).__name__


@dataclass(slots=True)
class _Instance:
    ds: Dataset
    name: str
    size: int
    group: str  # the archive, JSON document or folder it came in
    skipped: tuple[int, ...] = ()  # tags of elements skipped unread (too large)


@dataclass(slots=True)
class _Broken:
    """An item or member that may be an instance but could not be read whole."""

    name: str
    group: str
    error: IntakeError
    study: str | None = None  # its Study Instance UID, when that much was read


@dataclass(slots=True, eq=False)
class _Study:
    uid: str
    instances: dict[str, _Instance] = field(default_factory=dict)  # by SOP Instance UID
    series: dict[str, list[_Instance]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    error: IntakeError | None = None
    groups: set[str] = field(default_factory=set)
    # (PatientID, IssuerOfPatientID, its UniversalEntityID and UniversalEntityIDType)
    # of the first instance
    patient: tuple[str, ...] | None = None
    patient_from: str = ""  # the instance that set it
    # The order it joins, (AccessionNumber, issuer's LocalNamespaceEntityID,
    # UniversalEntityID, UniversalEntityIDType), and InstitutionName (the sender), of
    # the first instance that sends them, and that instance
    order: tuple[str, ...] | None = None
    order_from: str = ""
    institution: str | None = None
    institution_from: str = ""
    # What the instances checked held (_agreement_key): a study's instances mostly send
    # the same patient and study module, checked once
    agreed: set[tuple[Any, ...]] = field(default_factory=set)
    skipped: dict[int, int] = field(default_factory=dict)  # tag → instances skipping it


_Slot = _Study | IntakeError | _Broken


def read_studies(
    items: list[tuple[str, bytes]],
    network: Network,
    default_sender: str | None = None,
    *,
    max_element_bytes: int = MAX_ELEMENT_BYTES,
) -> Iterator[Unit]:
    """One Unit per study (in order of first appearance), and one error Unit per item
    that holds no readable instance of a study. ``default_sender`` (a facility code) is
    the sender of studies that name no institution and no accession issuer: the
    hospital whose PACS the files were exported from. Elements larger than
    ``max_element_bytes`` are skipped unread."""
    studies: dict[str, _Study] = {}
    slots: list[_Slot] = []
    # The process-wide switches are held while reading and each study's checks, and
    # never across a yield: the caller runs with them as they were.
    with quiet_pydicom(), no_gc():
        _read_all(items, studies, slots, max_element_bytes, network)
        settled = _settle(slots, studies)
    for index, slot in enumerate(settled, 1):
        if isinstance(slot, IntakeError):
            yield Unit(b"", index, "dicom", kind="study", error=slot)
            continue
        with quiet_pydicom():
            unit = _unit(slot, index, network, default_sender, max_element_bytes)
        yield unit


def check_instance(data: bytes, name: str = "the instance") -> None:
    """Raise the IntakeError ``read_studies`` would give a Part 10 file that cannot be
    read whole: cut short (in its header or pixel data), nesting sequences too deep.
    For the listeners, which store an instance before its study is read: a STOW-RS
    part cut by a boundary inside it must be refused, not stored and fail at commit."""
    with quiet_pydicom():
        got = _instance(name, io.BytesIO(data), len(data), False, MAX_ELEMENT_BYTES, "")
    if isinstance(got, _Broken):  # named as the caller names it (not a file's name)
        error = got.error
        message = error.issue.message.replace(file_ref(name), name, 1)
        raise IntakeError(error.code, message, location=error.location)


def _read_all(
    items: list[tuple[str, bytes]],
    studies: dict[str, _Study],
    slots: list[_Slot],
    limit: int,
    network: Network,
) -> None:
    for name, data in items:
        notes: list[Issue] = []
        touched: list[_Study] = []
        read = 0
        for got in _datasets(name, data, notes, limit):
            if not isinstance(got, _Instance):
                slots.append(got)
                continue
            read += 1
            study = _place(got, studies, slots, network)
            if study is not None and study not in touched:
                touched.append(study)
        for study in touched:  # an archive's skipped members concern the studies in it
            study.issues.extend(n for n in notes if n not in study.issues)
        if (
            notes
            and not read
            and not any(isinstance(s, _Broken) and s.group == name for s in slots)
        ):
            slots.append(
                IntakeError(
                    "dicom-no-instances",
                    f"{file_ref(name)}: no DICOM instance in the archive "
                    f"({len(notes)} member(s) skipped)",
                )
            )


def _settle(slots: list[_Slot], studies: dict[str, _Study]) -> list[_Study | IntakeError]:
    """Each broken item fails the study it belongs to or, when its study is unknown,
    every study of its group; one that concerns no study is an error record."""
    out: list[_Study | IntakeError] = []
    for slot in slots:
        if not isinstance(slot, _Broken):
            out.append(slot)
            continue
        if slot.study is not None:
            targets = [studies[slot.study]] if slot.study in studies else []
        else:
            targets = [s for s in studies.values() if slot.group in s.groups]
        if not targets:
            out.append(slot.error)
        for study in targets:
            _fail(study, slot)
    return out


def _fail(study: _Study, broken: _Broken) -> None:
    if study.error is not None:
        return
    if broken.study is not None:
        tail = "the study is not converted (all of its instances or none)"
    else:
        tail = "it may be an instance of this study, so the study is not converted"
    study.error = IntakeError(
        broken.error.code,
        f"{broken.error.issue.message}; {tail}",
        location=broken.error.location,
    )


def _value(ds: Dataset, tag: int) -> Any:
    """The decoded value at ``tag`` (None when absent). pydicom decodes lazily and
    raises on a damaged element (an unknown VR, a value its VR cannot hold): that is
    IntakeError ``dicom-bad-value``, named by tag, never by value."""
    elem = _element(ds, tag, tag_label(tag))
    return elem.value if elem is not None else None


def _in_file(name: str, exc: IntakeError) -> IntakeError:
    return IntakeError(
        exc.code, f"{file_ref(name)}: {exc.issue.message}", location=exc.issue.location
    )


def _ascii(ds: Dataset, tag: int) -> str | None:
    """A UI, IS or LO value straight from its raw bytes: ordering reads these from
    every instance, and pydicom's general conversion
    costs ~8x more. Anything unusual (implicit VR, non-ASCII, several values) takes
    the checked path."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.VR in ("UI", "IS", "LO") and raw.value is not None:
        try:
            text = raw.value.decode("ascii").strip(" \x00")
        except (UnicodeDecodeError, AttributeError):
            pass
        else:
            if "\\" not in text:
                return text
    value = _value(ds, tag)
    return str(value).strip().rstrip("\x00") if value not in (None, "") else ""


def sent_uid(ds: Dataset, tag: int) -> str:
    """A UI value as sent, only its padding removed (NUL, and the spaces some senders
    pad with): the element's bytes whatever the transfer syntax. pydicom's UID strips
    every whitespace at both ends (TAB, LF, U+001C..U+001F, NBSP), so an implicit VR
    file or DICOM JSON (see ``_json_uids_as_sent``) passed ``1.2.3\x1f`` as ``1.2.3``
    where the same UID in an explicit VR file is refused. Several values come joined
    by '\\', as sent. Another VR than UI (a damaged one: XX) is pydicom's to read."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.VR in ("UI", None) and isinstance(raw.value, bytes):
        return raw.value.decode("latin-1").strip(" \x00")
    value = _value(ds, tag)
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value).strip(" \x00")
    return str(value).strip(" \x00") if value not in (None, "") else ""


def _uid(ds: Dataset, tag: int) -> str | None:
    text = sent_uid(ds, tag) or None
    problem = uid_problem(text) if text is not None else None
    if problem is not None:
        raise IntakeError("dicom-bad-value", f"{tag_label(tag)} {problem}", location=tag_label(tag))
    return text


# PS3.5 §9.1: a UID is dot-separated components of digits, 64 characters at most.
# Components with a leading zero break the same rule but are common in old feeds and
# cannot be mistaken for another UID: they are kept as sent.
_UID_FORM = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UID_MAX = 64


def uid_problem(text: str) -> str | None:
    """What makes ``text`` (padding stripped) not a DICOM UID, or None. A control
    character or a space would be dropped from the FHIR output, turning the UID into
    another one (``1.2.3\\x01.4`` into an instance ``1.2.3.4`` may name), so such a UID
    is refused, never cleaned; the value itself is never quoted."""
    if "\\" in text:
        return f"is not a DICOM UID: {text.count(chr(92)) + 1} values, where one is expected"
    if len(text) > _UID_MAX:
        return f"is not a DICOM UID: {len(text)} characters, at most {_UID_MAX}"
    if _UID_FORM.fullmatch(text) is None:
        if "\0" in text:
            return "is not a DICOM UID: it holds U+0000 (NUL)"
        if not text.strip("0123456789."):
            return "is not a DICOM UID: an empty component (a leading, trailing or doubled dot)"
        return "is not a DICOM UID: a character other than the digits 0-9 and '.'"
    return None


def _missing(name: str, tag: int) -> IntakeError:
    return IntakeError(
        "dicom-missing-uid",
        f"{file_ref(name)}: {tag_label(tag)} is empty, so the instance cannot be placed",
        location=tag_label(tag),
    )


def _is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    raw = meta.get_item(0x00020002, keep_deferred=True) if meta is not None else None
    value = raw.value if raw is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip(" \x00") == _DICOMDIR


def _place(
    inst: _Instance, studies: dict[str, _Study], slots: list[_Slot], network: Network
) -> _Study | None:
    """File the instance under its study and series. Without a readable Study Instance
    UID it may belong to any study of its group: a broken slot (a DICOMDIR belongs to
    none: an error record of its own)."""
    try:
        study_uid = _uid(inst.ds, _STUDY)
    except IntakeError as exc:
        slots.append(_Broken(inst.name, inst.group, _in_file(inst.name, exc)))
        return None
    if study_uid is None:
        error = _missing(inst.name, _STUDY)
        slots.append(error if _is_dicomdir(inst.ds) else _Broken(inst.name, inst.group, error))
        return None
    study = studies.get(study_uid)
    if study is None:
        study = studies[study_uid] = _Study(study_uid)
        slots.append(study)
    study.groups.add(inst.group)
    for tag in inst.skipped:
        study.skipped[tag] = study.skipped.get(tag, 0) + 1
    try:
        _same_study(study, inst, network)
    except IntakeError as exc:
        study.error = study.error or exc
        return study
    try:
        series_uid, sop_uid = _uid(inst.ds, _SERIES), _uid(inst.ds, _SOP)
    except IntakeError as exc:
        study.error = study.error or _in_file(inst.name, exc)
        return study
    if series_uid is None or sop_uid is None:
        if study.error is None:
            study.error = _missing(inst.name, _SERIES if series_uid is None else _SOP)
        return study
    first = study.instances.get(sop_uid)
    if first is not None:
        study.issues.append(
            Issue(
                "intake.duplicate-instance",
                f"SOP instance {sop_uid} is in {file_ref(first.name)} and again in "
                f"{file_ref(inst.name)}; counted once",
                location=tag_label(_SOP),
                severity="warning",
            )
        )
        return study
    study.instances[sop_uid] = inst
    study.series.setdefault(series_uid, []).append(inst)
    return study


def _same_patient(study: _Study, inst: _Instance) -> None:
    """One patient per study: every instance (a duplicate too) names the patient of
    the first by PatientID and IssuerOfPatientID. Raises IntakeError naming both
    instances and the tag, never a value."""
    try:
        ident = (
            _sent_text(inst.ds, _PATIENT_ID),
            _sent_text(inst.ds, _ISSUER),
            *_issuer_uid(inst.ds),
        )
    except IntakeError as exc:
        raise _in_file(inst.name, exc) from None
    if study.patient is None:
        study.patient, study.patient_from = ident, inst.name
        return
    for n, tag in enumerate((_PATIENT_ID, _ISSUER, _QUALIFIERS, _QUALIFIERS)):
        mine, first = ident[n], study.patient[n]
        if mine == first:
            continue
        a, b = file_ref(study.patient_from), file_ref(inst.name)
        if not mine or not first:
            lacking, having = (b, a) if not mine else (a, b)
            raise IntakeError(
                "dicom-patient-missing",
                f"{lacking} has no {tag_label(tag)} but {having}, of the same study, has "
                "one: the instances cannot be shown to be of one patient, so the study "
                "is not converted",
                location=tag_label(tag),
            )
        raise IntakeError(
            "dicom-patient-mismatch",
            f"{a} and {b} are instances of one study but name different patients "
            f"({tag_label(tag)} differs), so the study is not converted",
            location=tag_label(tag),
        )


# The joining values' locations, as the view labels them (an error's location)
_ORDER_LABELS = (
    tag_label(_ACCESSION),
    *(
        f"{tag_label(_ACCESSION_ISSUER)}[1] > {tag_label(t)}"
        for t in (_LOCAL_ID, _UNIVERSAL_ID, _UID_TYPE)
    ),
)


def _same_order(study: _Study, inst: _Instance) -> None:
    """One order per study: the view reads AccessionNumber and its issuer from the
    first instance that sends them, so every instance that sends any of them must send
    the same four values (as sent, padding removed as for the patient), or the study
    would join the order of whichever file came first. An instance sending none of
    them names no order (a workstation's secondary capture often has none) and takes
    no part; one with the number but not its issuer, beside one with both, names the
    number in another system: a mismatch. Raises IntakeError naming both files and the
    tag, never a value; a control character (or a TAB at an end) in any instance's value is
    the identifying-field error the view gives the first one."""
    try:
        key = (
            _sent_text(inst.ds, _ACCESSION),
            *_accession_issuer(inst.ds),
        )
    except IntakeError as exc:
        raise _in_file(inst.name, exc) from None
    for value, label in zip(key, _ORDER_LABELS, strict=True):
        _identifying(value, label, inst.name)
    if not any(key):
        return
    if study.order is None:
        study.order, study.order_from = key, inst.name
        return
    for mine, first, label in zip(key, study.order, _ORDER_LABELS, strict=True):
        if mine != first:
            raise _study_mismatch(label, study.order_from, inst.name, mine, first)


def _same_sender(study: _Study, inst: _Instance, network: Network) -> None:
    """One sender per study: InstitutionName decides whose number a PatientID without
    its own issuer is (and the accession number's system without an issuer), and the
    view reads it from the first instance that sends one. Two instances naming two
    institutions fail the study; one naming none takes no part (the attribute is
    Type 3, and post-processing series often lack it). Two spellings the network knows
    as one institution (its name in either language, an alias) are one sender: the
    General Equipment module is per series, and a workstation's series may spell it
    otherwise (the remedy for a refused study: the spelling as an alias in the network)."""
    try:
        name = _institution_sent(inst.ds)
    except IntakeError as exc:
        raise _in_file(inst.name, exc) from None
    _identifying(name, tag_label(_INSTITUTION), inst.name)
    name = name.strip()  # as the view reads it: a TAB at an end names no other sender
    if not name:
        return
    if study.institution is None:
        study.institution, study.institution_from = name, inst.name
    elif name != study.institution and not _one_institution(network, name, study.institution):
        label = tag_label(_INSTITUTION)
        raise _study_mismatch(label, study.institution_from, inst.name, name, study.institution)


def _one_institution(network: Network, name: str, other: str) -> bool:
    """Whether the network knows both names as one institution."""
    first, second = network.find(name), network.find(other)
    return first is not None and second is not None and first.facility == second.facility


def _same_study(study: _Study, inst: _Instance, network: Network) -> None:
    """``_same_patient``, ``_same_order`` and ``_same_sender``, skipped for an instance
    whose elements they read hold what those of one already checked held (the same
    bytes in the same charset, VR and byte order, or the same values once decoded: the
    same verdict). A study's instances mostly send the very same patient and study
    module; decoding them anew in each, with the issuers' sequences, had cost more than
    a third of reading a study's headers."""
    key = _agreement_key(inst.ds)
    if key is not None and key in study.agreed:
        return
    _same_patient(study, inst)
    _same_order(study, inst)
    _same_sender(study, inst, network)
    if key is not None:
        study.agreed.add(key)


# What the three checks read: the charset the text is read in, and each element (a
# sequence by its first item's elements, which are all the checks read of it)
_AGREEMENT: tuple[tuple[BaseTag, tuple[BaseTag, ...]], ...] = tuple(
    (BaseTag(tag), tuple(map(BaseTag, inside)))
    for tag, inside in (
        (_CHARSET, ()),
        (_PATIENT_ID, ()),
        (_ISSUER, ()),
        (_QUALIFIERS, (_UNIVERSAL_ID, _UID_TYPE)),
        (_ACCESSION, ()),
        (_ACCESSION_ISSUER, (_LOCAL_ID, _UNIVERSAL_ID, _UID_TYPE)),
        (_INSTITUTION, ()),
    )
)
_NO_KEY = object()


def _agreement_key(ds: Dataset) -> tuple[Any, ...] | None:
    """The elements ``_same_study`` checks, as a key; None when one holds what the key
    cannot stand for (a value neither text nor bytes: it is checked every time)."""
    key = tuple(_element_key(ds, tag, inside) for tag, inside in _AGREEMENT)
    return None if _NO_KEY in key else key


def _element_key(ds: Dataset, tag: int, inside: tuple[int, ...]) -> Any:
    # the element as stored (raw, or read): get_item's tag conversions cost more than
    # the rest of the key (``_is_sequence`` reads it so too)
    raw = ds._dict.get(tag)  # type: ignore[call-overload]
    if raw is None:
        return None
    value = raw.value
    if isinstance(raw, RawDataElement) and isinstance(value, bytes):
        return (raw.VR, raw.is_little_endian, raw.is_implicit_VR, value)
    if inside and isinstance(value, Sequence):
        if not value:
            return ()
        found = tuple(_element_key(value[0], t, ()) for t in inside)
        return _NO_KEY if _NO_KEY in found else found
    if isinstance(value, (str, bytes)):
        return (raw.VR, value)
    return _NO_KEY


def _identifying(value: str, label: str, name: str) -> None:
    """The view's rule for an identifying value (gateway/intake/_controls.py), applied to
    every instance's, where the view reads only the first: a control character, or
    (but in InstitutionName, looked up by name) white space other than SPACE at an end,
    fails the study."""
    if CONTROL.search(value):
        raise _in_file(name, identifying_error(label))
    if label != tag_label(_INSTITUTION):
        try:
            stripped(value, label, lambda _: True)
        except IntakeError as exc:
            raise _in_file(name, exc) from None


def _study_mismatch(label: str, first: str, other: str, mine: str, theirs: str) -> IntakeError:
    a, b = file_ref(first), file_ref(other)
    if not mine or not theirs:
        lacking, having = (b, a) if not mine else (a, b)
        what = f"{lacking} has no {label} but {having}, of the same study, has one"
    else:
        what = f"{a} and {b} are instances of one study but {label} differs"
    joins = "name one sender" if label == tag_label(_INSTITUTION) else "join one order"
    return IntakeError(
        "dicom-study-mismatch",
        f"{what}: the study cannot be shown to {joins}, so it is not converted",
        location=label,
    )


def _accession_issuer(ds: Dataset) -> tuple[str, ...]:
    """LocalNamespaceEntityID (UT), UniversalEntityID (UT) and UniversalEntityIDType (CS)
    of the first IssuerOfAccessionNumberSequence item, as sent: the mapping reads these."""
    return _first_item_sent(
        ds, _ACCESSION_ISSUER, ((_LOCAL_ID, False), (_UNIVERSAL_ID, False), (_UID_TYPE, True))
    )


def _institution_sent(ds: Dataset) -> str:
    """InstitutionName as sent, padding removed, read as ``_institution_text`` reads it
    (Chinese bytes under an absent or single-byte charset as the likely CJK charset),
    so that one name sent in GB18030 by one instance and UTF-8 by another is one name.
    Not ``str.strip()``: it takes U+001C..U+001F, which must be seen."""
    raw = ds.get_item(_INSTITUTION, keep_deferred=True)
    data = raw.value if isinstance(raw, RawDataElement) else None
    if isinstance(data, bytes) and not data.isascii() and single_byte_or_none(ds):
        codec = likely_cjk_charset(data)
        if codec is not None:
            return _unpadded(data.decode(codec), True)
    return _sent_text(ds, _INSTITUTION)


def _sent_text(ds: Dataset, tag: int, *, leading: bool = True) -> str:
    """A patient identity value (PatientID, IssuerOfPatientID: LO; the issuer's
    UniversalEntityID: UT) as sent, only its padding removed, the same way whatever the
    transfer syntax. PS3.5 Table 6.2-1: LO is "a character string that may be padded
    with leading and/or trailing spaces" and "shall not have Control Characters except
    for ESC"; UT "may be padded with trailing spaces, which may be ignored, but leading
    spaces are considered to be significant". So only SPACE (20H) is padding, at both
    ends of LO and at the end of UT (``leading=False``), and trailing NULs, which some
    devices pad text with as UIDs are padded. Anything else is part of the value: a TAB,
    a NUL in front, an ideographic space (U+3000). pydicom's text and ``str.strip()``
    took more: an implicit VR file or DICOM JSON lost a trailing TAB that an explicit VR
    file kept, so the same PatientID was two patients in one transfer syntax pair and
    0012345 and 0012345<TAB> one patient in another. Several values come joined by '\\'."""
    raw = ds.get_item(tag, keep_deferred=True)
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) and raw.value.isascii():
        values: list[Any] = raw.value.decode("ascii").split("\\")
    else:  # decoded in the dataset's charset (pydicom keeps leading spaces), or JSON
        value = _value(ds, tag)
        if value is None:
            return ""
        values = list(value) if isinstance(value, (MultiValue, list)) else [value]
    return "\\".join(_unpadded(str(v), leading) for v in values if v is not None)


def _unpadded(text: str, leading: bool) -> str:
    text = text.rstrip("\x00 ")
    return text.lstrip(" ") if leading else text


def _issuer_uid(ds: Dataset) -> tuple[str, ...]:
    """UniversalEntityID and UniversalEntityIDType of the first
    IssuerOfPatientIDQualifiersSequence item: the Patient mapping reads both (the type
    decides whether the OID names the issuer's system)."""
    return _first_item_sent(ds, _QUALIFIERS, ((_UNIVERSAL_ID, False), (_UID_TYPE, True)))


def _first_item_sent(
    ds: Dataset, sequence: int, texts: tuple[tuple[int, bool], ...]
) -> tuple[str, ...]:
    """The ``texts`` (tag, whether leading spaces are padding) of ``sequence``'s first
    item, as sent (``_sent_text``); "" each when it has none."""
    items = _value(ds, sequence)
    if not items:
        return ("",) * len(texts)
    try:
        return tuple(_sent_text(items[0], tag, leading=leading) for tag, leading in texts)
    except PYDICOM_FAULTS:
        raise IntakeError(
            "dicom-bad-value",
            f"{tag_label(sequence)} cannot be read",
            location=tag_label(sequence),
        ) from None


# -- items -> datasets ---------------------------------------------------------------------
def _folder(name: str) -> str:
    return name.rsplit("/", 1)[0] if "/" in name else ""


def _datasets(
    name: str, data: bytes, notes: list[Issue], limit: int
) -> Iterator[_Instance | _Broken | IntakeError]:
    kind = _kind(data)
    if kind == "zip":
        yield from _archive(name, data, notes, limit)
    elif kind == "json":
        yield from _json(name, data, name)
    elif kind in ("part10", "raw"):
        yield _instance(name, io.BytesIO(data), len(data), kind == "raw", limit, _folder(name))
    else:
        yield IntakeError(
            "dicom-not-dicom",
            f"{file_ref(name)}: not DICOM (no 'DICM' marker at byte 128), DICOM JSON or a zip "
            "archive",
        )


def _kind(head: bytes) -> str:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"  # a local file header, or the end record of an empty archive
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    stripped = head[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "json"
    if head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) > 8:
        return "raw"  # a dataset written without the 128-byte preamble
    return "other"


def _instance(
    name: str, fp: IO[bytes], size: int, force: bool, limit: int, group: str, drain: bool = False
) -> _Instance | _Broken:
    """One Part 10 file read whole: its header parsed (elements beyond ``limit`` bytes
    skipped), its end checked (an element cut short fails it), and, for an archive
    member, its bytes read to the end so that the archive's CRC is checked."""
    ds: Dataset | None = None
    try:
        ds = _part10(name, fp, force, limit)
        scan = _Scan(ds)
        problem = _incomplete(ds, scan, fp, size, name)
        if problem is not None:
            return _Broken(name, group, problem, _study_of(ds))
        _check_depth(name, ds)  # after the end check: it opens sequences of defined length
        if drain:
            while fp.read(_DRAIN):
                pass
    except IntakeError as exc:
        return _Broken(name, group, exc, _study_of(ds) if ds is not None else None)
    except ARCHIVE_FAULTS as exc:
        error = IntakeError(
            "dicom-damaged-member", f"{file_ref(name)}: damaged in the archive ({_why(exc)})"
        )
        return _Broken(name, group, error, _study_of(ds) if ds is not None else None)
    return _Instance(ds, name, size, group, tuple(scan.skipped))


class _Scan:
    """What the end check and the skipped-element count need, in one pass over the
    elements (three passes cost ~8 % of a read): the raw element whose value comes
    last, the furthest position of an element pydicom read whole (a sequence of
    undefined length), and the tags of elements skipped unread."""

    __slots__ = ("last", "skipped", "whole_tell")

    def __init__(self, ds: Dataset) -> None:
        self.last: RawDataElement | None = None
        self.whole_tell = 0
        self.skipped: list[int] = []
        last_tell = -1
        for tag, e in ds.items():
            if isinstance(e, RawDataElement):
                if e.value_tell > last_tell:
                    self.last, last_tell = e, e.value_tell
                if e.value is None and e.length not in (0, _UNDEFINED):
                    self.skipped.append(tag)
            elif isinstance(e, DataElement):
                self.whole_tell = max(self.whole_tell, e.file_tell or 0)


def _study_of(ds: Dataset) -> str | None:
    try:
        return _uid(ds, _STUDY)
    except IntakeError:
        return None


def _part10(name: str, fp: IO[bytes], force: bool, limit: int) -> Dataset:
    try:
        with warnings.catch_warnings():  # charset and VR complaints: intake reports its own
            warnings.simplefilter("ignore")
            # A loose file in the usual shape: the same header, read at twice the speed
            # (_fastread); archive members are streamed and anything unusual is dcmread's.
            if not force and isinstance(fp, io.BytesIO):
                ds = read_header(fp, limit)
                if ds is not None:
                    return ds
            return dcmread(fp, stop_before_pixels=True, force=force, defer_size=limit)
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError):
        raise  # the archive is damaged, not the DICOM in it
    except RecursionError:  # pydicom reads sequences of undefined length recursively
        raise _too_deep(name, None) from None
    except PYDICOM_FAULTS as exc:
        raise IntakeError(
            "dicom-unreadable",
            f"{file_ref(name)}: the DICOM header cannot be read ({type(exc).__name__})",
        ) from None


def _too_deep(name: str, label: str | None) -> IntakeError:
    where = f" at {label}" if label else ""
    return IntakeError(
        "dicom-unreadable",
        f"{file_ref(name)}: sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels{where}; "
        "not read",
        location=label,
    )


def _sequences(ds: Dataset, depth: int = 1) -> list[int]:
    """The tags of ``ds``'s sequences (each at ``depth``) that could nest deeper than
    MAX_SEQUENCE_DEPTH, from its elements as stored (a look-up by tag per element, with
    pydicom's tag conversions, had cost ~15 % of reading a header)."""
    # Each level takes an item header (8 bytes) and a sequence element's header (8 in
    # implicit VR, 12 explicit): a sequence of defined length under 16 bytes a level
    # still allowed cannot reach past the bound, and is left unparsed (opening every
    # sequence of every instance to count its levels had cost ~20 % of a header's read)
    shallow = 16 * (MAX_SEQUENCE_DEPTH + 1 - depth)
    found = []
    for tag, raw in list(ds._dict.items()):
        vr = raw.VR  # another explicit VR is no sequence, read or not: the test spared
        if vr is not None and vr != "SQ":
            continue
        if not (isinstance(raw, RawDataElement) and raw.length < shallow) and _is_sequence(
            raw, tag
        ):
            found.append(int(tag))
    return found


def _is_sequence(raw: Any, tag: int) -> bool:
    if isinstance(raw, DataElement):
        return raw.VR == "SQ"
    if raw is None or (raw.value is None and raw.length not in (0, _UNDEFINED)):
        return False  # deferred (too large): never read here, the file may be gone
    if raw.VR is not None:
        return bool(raw.VR == "SQ")
    try:  # implicit VR: the dictionary says
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _check_depth(name: str, ds: Dataset) -> None:
    """Refuse sequences nested deeper than MAX_SEQUENCE_DEPTH, without recursion: a
    sequence of defined length is read one level at a time, as it is opened here."""
    for top in _sequences(ds):
        stack: list[tuple[Dataset, int, int]] = [(ds, int(top), 1)]
        try:
            while stack:
                parent, tag, depth = stack.pop()
                if depth > MAX_SEQUENCE_DEPTH:
                    raise _too_deep(name, tag_label(int(top)))
                try:
                    items = parent[tag].value
                except PYDICOM_FAULTS:
                    continue  # damaged: the mapping that reads it says so, as before
                for item in items:
                    stack.extend((item, t, depth + 1) for t in _sequences(item, depth + 1))
        except RecursionError:  # an undefined-length nest inside a defined-length one
            raise _too_deep(name, tag_label(int(top))) from None


def _incomplete(
    ds: Dataset, scan: _Scan, fp: IO[bytes], size: int, name: str
) -> IntakeError | None:
    """An element cut short by the end of the file (pydicom stops there silently: the
    elements after it would just be missing), named by tag; None when whole."""
    implicit, little = ds.original_encoding
    if implicit is None or little is None or _transfer_syntax(ds) == _DEFLATED:
        return None  # a deflated dataset is read from an inflated copy: no positions
    pos = fp.tell()
    if pos < size:  # stopped before the pixel data
        return _pixels_incomplete(fp, pos, size, bool(implicit), bool(little), name)
    last = scan.last
    if last is None or last.length == _UNDEFINED:
        return None
    if scan.whole_tell > last.value_tell:
        return None  # a sequence of undefined length came last: pydicom found its end
    end = last.value_tell + last.length
    label = tag_label(last.tag)
    if end > size:
        return _cut(name, label, f"its value needs {end - size} more byte(s) than the file has")
    if end < size:
        return _cut(name, label, "the file ends inside the header of the next element")
    return None


def _cut(name: str, label: str, why: str) -> IntakeError:
    return IntakeError(
        "dicom-truncated",
        f"{file_ref(name)}: the file is cut short at {label}: {why}",
        location=label,
    )


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    raw = meta.get_item(0x00020010, keep_deferred=True) if meta is not None else None
    value = raw.value if raw is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip(" \x00")


def _pixels_incomplete(
    fp: IO[bytes], pos: int, size: int, implicit: bool, little: bool, name: str
) -> IntakeError | None:
    """Whether the pixel data element (where reading stopped) fits in the file: its
    length, or for encapsulated data its fragments up to the sequence delimiter."""
    endian = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return _cut(name, "(7FE0,0010) PixelData", "the file ends inside its header")
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | element
    label = tag_label(tag)
    if tag not in _PIXEL_TAGS:
        return None  # not where stop_before_pixels stops: nothing to say about it
    if implicit:
        length = struct.unpack(endian + "L", head[4:])[0]
    elif head[4:6] in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return _cut(name, label, "the file ends inside its header")
        length = struct.unpack(endian + "L", more)[0]
    else:
        length = struct.unpack(endian + "H", head[6:8])[0]
    if length != _UNDEFINED:
        end = fp.tell() + length
        return _cut(name, label, f"{end - size} byte(s) of it are missing") if end > size else None
    while True:  # encapsulated: (FFFE,E000) fragments, then (FFFE,E0DD)
        item = fp.read(8)
        if len(item) < 8:
            return _cut(name, label, "its fragments end without a sequence delimiter")
        g, e, n = struct.unpack(endian + "HHL", item)
        if (g << 16 | e) == _SEQ_END:
            return None
        if (g << 16 | e) != _ITEM or n == _UNDEFINED:
            return None  # malformed fragments: not a question of length
        if fp.tell() + n > size:
            return _cut(name, label, "a fragment is cut short")
        fp.seek(n, io.SEEK_CUR)


def _no_bulk(tag: str, vr: str, uri: str) -> None:
    return None  # BulkDataURI values (pixel data elsewhere) are not fetched


_BOM = b"\xef\xbb\xbf"


def _json(name: str, data: bytes, group: str) -> Iterator[_Instance | _Broken | IntakeError]:
    try:
        doc = orjson.loads(data[len(_BOM) :] if data.startswith(_BOM) else data)
    except orjson.JSONDecodeError as exc:
        yield IntakeError(
            "dicom-json",
            f"{file_ref(name)}: not valid JSON (line {exc.lineno}, column {exc.colno})",
        )
        return
    objects = doc if isinstance(doc, list) else [doc]
    for n, obj in enumerate(objects, 1):
        where = name if len(objects) == 1 else f"{name}[{n}]"
        if not isinstance(obj, dict):
            error = IntakeError("dicom-json", f"{file_ref(where)}: not a DICOM JSON object")
            yield _Broken(where, group, error)
            continue
        deep = _json_too_deep(where, obj)
        if deep is not None:
            yield _Broken(where, group, deep, _json_study(obj))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = Dataset.from_json(obj, bulk_data_uri_handler=_no_bulk)
        except PYDICOM_FAULTS:  # malformed attribute objects
            yield _Broken(where, group, _json_fault(where, obj), _json_study(obj))
            continue
        _json_uids_as_sent(ds, obj)
        yield _Instance(ds, where, len(data) // len(objects), group)


def _json_uids_as_sent(ds: Dataset, obj: dict[str, Any]) -> None:
    """Put back the Study, Series and SOP Instance UIDs as the JSON sent them when
    pydicom changed them (its UID strips whitespace at both ends: ``1.2.3\x1f`` read as
    ``1.2.3``), so that intake checks what was sent (see ``sent_uid``); rare, so each
    object costs three look-ups."""
    for tag in (_STUDY, _SERIES, _SOP):
        sent = _json_text(obj, tag)
        if sent is None or sent == sent_uid(ds, tag):
            continue
        data = sent.encode("utf-8", "replace")
        ds[tag] = RawDataElement(BaseTag(tag), "UI", len(data), data, 0, False, True)


def _json_text(obj: dict[str, Any], tag: int) -> str | None:
    """The values of a text attribute of a DICOM JSON object, joined by '\\' and
    without padding; None when it has none."""
    attr = obj.get(f"{tag:08X}") or obj.get(f"{tag:08x}")  # pydicom reads either case
    values = attr.get("Value") if isinstance(attr, dict) else None
    if not isinstance(values, list) or not values:
        return None
    if not all(isinstance(v, str) for v in values):
        return None
    return "\\".join(values).strip(" \x00")


def _json_too_deep(where: str, obj: dict[str, Any]) -> IntakeError | None:
    """The top-level attribute nesting sequences deeper than MAX_SEQUENCE_DEPTH, found
    without recursion (pydicom's from_json recurses: Python's stack would overflow)."""
    for key, attr in obj.items():
        stack: list[tuple[Any, int]] = [(attr, 1)]
        while stack:
            node, depth = stack.pop()
            items = node.get("Value") if isinstance(node, dict) and node.get("vr") == "SQ" else None
            if not isinstance(items, list):
                continue
            if depth > MAX_SEQUENCE_DEPTH:
                try:
                    label = tag_label(int(key, 16))
                except ValueError:
                    label = f"key {_safe(key)[:16]!r}"
                error = _too_deep(where, label)
                return IntakeError("dicom-json", error.issue.message, location=label)
            for item in items:
                if isinstance(item, dict):
                    stack.extend((a, depth + 1) for a in item.values())
    return None


def _json_study(obj: dict[str, Any]) -> str | None:
    """The Study Instance UID of a DICOM JSON object; None when it has none or one
    that is no UID (its study is then unknown, as ``_place`` has it)."""
    text = _json_text(obj, _STUDY)
    return text if text and uid_problem(text) is None else None


def _json_fault(where: str, obj: dict[str, Any], path: str = "") -> IntakeError:
    """The first attribute of ``obj`` pydicom cannot read, named by tag (inside the
    first bad sequence item when the sequence is what fails)."""
    for key, attr in obj.items():
        try:
            tag = int(key, 16) if len(key) == 8 else -1
        except ValueError:
            tag = -1
        if tag < 0:
            label = f"{path}key {_safe(key)[:16]!r}"
            why = "is not a DICOM tag (8 hexadecimal digits)"
            return IntakeError("dicom-json", f"{file_ref(where)}: {label} {why}", location=label)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Dataset.from_json({key: attr}, bulk_data_uri_handler=_no_bulk)
        except PYDICOM_FAULTS:
            label = f"{path}{tag_label(tag)}"
            items = attr.get("Value") if isinstance(attr, dict) else None
            if isinstance(attr, dict) and attr.get("vr") == "SQ" and isinstance(items, list):
                for n, item in enumerate(items, 1):
                    if not isinstance(item, dict):
                        break
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            Dataset.from_json(item, bulk_data_uri_handler=_no_bulk)
                    except PYDICOM_FAULTS:
                        return _json_fault(where, item, f"{label}[{n}] > ")
            return IntakeError(
                "dicom-json",
                f"{file_ref(where)}: {label} is not a valid DICOM JSON attribute "
                "(PS3.18 Annex F: 'vr' and a 'Value', 'InlineBinary' or 'BulkDataURI' "
                "that the VR can hold)",
                location=label,
            )
    return IntakeError(
        "dicom-json", f"{file_ref(where)}: not a DICOM JSON dataset (PS3.18 Annex F)"
    )


def _skip(notes: list[Issue], member: str, why: str) -> None:
    notes.append(
        Issue("intake.skipped-member", f"{file_ref(member)}: {why}; skipped", severity="warning")
    )


def _archive(
    name: str, data: bytes, notes: list[Issue], limit: int
) -> Iterator[_Instance | _Broken | IntakeError]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except ARCHIVE_FAULTS as exc:
        yield IntakeError(
            "dicom-zip", f"{file_ref(name)}: not a readable zip archive ({_why(exc)})"
        )
        return
    members = [i for i in infos if not i.filename.endswith("/")]
    if not members:
        yield IntakeError("dicom-zip", f"{file_ref(name)}: an empty zip archive (no files in it)")
        return
    if len(members) > MAX_MEMBERS:
        yield IntakeError(
            "dicom-zip", f"{file_ref(name)}: {len(members)} files, more than {MAX_MEMBERS} allowed"
        )
        return
    if sum(i.file_size for i in members) > MAX_TOTAL_BYTES:
        yield IntakeError(
            "dicom-zip", f"{file_ref(name)}: unpacks to more than {MAX_TOTAL_BYTES >> 30} GiB"
        )
        return
    for info in members:
        member = f"{name}/{info.filename}"
        base = info.filename.rsplit("/", 1)[-1]
        if base.startswith(".") or info.filename.startswith("__MACOSX/"):
            continue  # finder and editor litter, like the hidden files a folder walk skips
        if not info.filename:
            error = IntakeError("dicom-damaged-member", f"{file_ref(name)}: a member has no name")
            yield _Broken(member, name, error)
            continue
        if info.flag_bits & 0x1:
            error = IntakeError(
                "dicom-damaged-member",
                f"{file_ref(member)}: encrypted, so it cannot be told whether it is an instance",
            )
            yield _Broken(member, name, error)
            continue
        if info.compress_type == zipfile.ZIP_LZMA:
            # An LZMA header names its own dictionary size, up to 4 GiB, which the
            # decompressor allocates before the first byte: a memory bomb in 20 bytes.
            error = IntakeError(
                "dicom-refused-member",
                f"{file_ref(member)}: LZMA-compressed; only stored, deflated or bzip2 members "
                "are read",
            )
            yield _Broken(member, name, error)
            continue
        try:
            yield from _member(archive, info, member, name, notes, limit)
        except ARCHIVE_FAULTS as exc:
            error = IntakeError(
                "dicom-damaged-member", f"{file_ref(member)}: damaged in the archive ({_why(exc)})"
            )
            yield _Broken(member, name, error)


_NOT_INSTANCE = {"zip": "an archive inside the archive", "other": "not a DICOM file"}


def _refused(info: zipfile.ZipInfo) -> str | None:
    if info.file_size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 30} GiB"
    if info.file_size > _RATIO_FLOOR and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
        return "compressed beyond any DICOM file (a zip bomb?)"
    return None


def _member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    member: str,
    group: str,
    notes: list[Issue],
    limit: int,
) -> Iterator[_Instance | _Broken | IntakeError]:
    with archive.open(info) as fp:
        kind = _kind(fp.read(132))  # a bomb too: its first bytes are cheap to inflate
        why = _refused(info)
        if kind in ("zip", "other"):  # not an instance: the study does not depend on it
            _skip(notes, member, why or _NOT_INSTANCE[kind])
            return
        if why is None and kind == "json" and info.file_size > MAX_JSON_BYTES:
            why = "a DICOM JSON file too large to read whole"
        if why is not None:  # a DICOM file or DICOM JSON the gateway will not read
            error = IntakeError("dicom-refused-member", f"{file_ref(member)}: {why}; not read")
            yield _Broken(member, group, error)
            return
        fp.seek(0)
        if kind == "json":
            yield from _json(member, fp.read(), group)
        else:  # streamed: dcmread stops at the pixel data, then the rest is drained
            yield _instance(member, fp, info.file_size, kind == "raw", limit, group, drain=True)


# -- studies -> units ----------------------------------------------------------------------
def _number(ds: Dataset, keyword: str) -> int | None:
    """For ordering only: a damaged number orders last (the mapping reports it)."""
    try:
        text = _ascii(ds, tag_for_keyword(keyword) or 0)
        return int(float(text)) if text else None
    except (TypeError, ValueError, OverflowError, IntakeError):
        return None


def _order(instances: list[_Instance], keyword: str, uid_tag: int) -> list[_Instance]:
    def key(inst: _Instance) -> tuple[bool, int, str]:
        n = _number(inst.ds, keyword)
        return (n is None, n or 0, _uid(inst.ds, uid_tag) or "")

    return sorted(instances, key=key)


def _tree(study: _Study) -> Node:
    """The study node: series by SeriesNumber then UID, instances by InstanceNumber."""
    ordered = []
    for uid, instances in study.series.items():
        first = next(
            (n for i in instances if (n := _number(i.ds, "SeriesNumber")) is not None), None
        )
        ordered.append(((first is None, first or 0, uid), instances))
    series_nodes = []
    for s, (_, instances) in enumerate(sorted(ordered, key=lambda x: x[0]), 1):
        members = _order(instances, "InstanceNumber", _SOP)
        children = tuple(
            Node("instance", (inst.ds,), f"series[{s}]/instance[{n}]")
            for n, inst in enumerate(members, 1)
        )
        series_nodes.append(Node("series", tuple(i.ds for i in members), f"series[{s}]", children))
    datasets = tuple(ds for node in series_nodes for ds in node.datasets)
    return Node("study", datasets, "", tuple(series_nodes))


def _charset(ds: Dataset) -> str | None:
    value = _value(ds, _CHARSET)
    if value in (None, ""):
        return None
    terms = [str(t).strip() for t in (value if isinstance(value, MultiValue) else [value])]
    return "\\".join(terms)


def _charset_issues(charset: str | None) -> list[Issue]:
    unknown = [t for t in (charset or "").split("\\") if t and t not in python_encoding]
    return [
        Issue(
            "intake.charset-unknown",
            f"Specific Character Set {_safe(t)!r} is not a DICOM character set pydicom "
            "knows; text in it is read as ASCII",
            location=tag_label(_CHARSET),
            severity="warning",
        )
        for t in unknown
    ]


def _known_charsets_only(datasets: tuple[Dataset, ...]) -> None:
    """Drop unknown terms from Specific Character Set (already reported): pydicom would
    warn about them at every value it decodes, and reads them as the default anyway."""
    for ds in datasets:
        try:
            terms = (_charset(ds) or "").split("\\")
        except IntakeError:  # reported when the view reads a value of this dataset
            continue
        known = [t for t in terms if t in python_encoding]
        if len(known) != len(terms):
            if any(known):
                ds.SpecificCharacterSet = known if len(known) > 1 else known[0]
            else:
                del ds.SpecificCharacterSet


def _sender(view: DicomView, network: Network) -> str | None:
    """The sending institution's facility code: InstitutionName, else the accession
    number's issuer, found in the network; else the name as sent."""
    names = [
        view.first("InstitutionName", view.root),
        view.first("IssuerOfAccessionNumberSequence.LocalNamespaceEntityID", view.root),
        view.first("IssuerOfAccessionNumberSequence.UniversalEntityID", view.root),
    ]
    for name in names:
        inst = network.find(name)
        if inst is not None:
            return inst.facility
    return next((n for n in names[:2] if n), None)


def _manifest(study: _Study, root: Node) -> bytes:
    """The study's record bytes for the audit hash: its UID and each instance's SOP
    Instance UID and size, in tree order (no file names: they may name the patient)."""
    by_ds = {id(i.ds): (uid, i.size) for uid, i in study.instances.items()}
    lines = [f"DICOM study {study.uid}"]
    lines += [f"{by_ds[id(ds)][0]}\t{by_ds[id(ds)][1]}" for ds in root.datasets]
    return ("\n".join(lines) + "\n").encode()


def _names(study: _Study, root: Node) -> dict[str, str]:
    """Each instance's label in the tree (``series[1]/instance[2]``) -> its file, and
    each series' (``series[1]``) -> the file of its first instance."""
    by_ds = {id(i.ds): file_ref(i.name) for i in study.instances.values()}
    names = {s.label: by_ds[id(s.datasets[0])] for s in root.children}
    names.update((i.label, by_ds[id(i.datasets[0])]) for s in root.children for i in s.children)
    return names


def _skipped_note(skipped: dict[int, int], limit: int) -> Issue:
    tags = sorted(skipped)
    named = ", ".join(tag_label(t) for t in tags[:5]) + (", …" if len(tags) > 5 else "")
    return Issue(
        "intake.dicom-skipped-elements",
        f"{sum(skipped.values())} element(s) larger than {limit} bytes (dicom_max_element_bytes) "
        f"skipped unread: {named}",
        severity="warning",
    )


def _institution_text(ds: Dataset) -> str:
    """InstitutionName as text, to find the sender: bytes that are Chinese in a
    multi-byte charset under an absent or single-byte one are read as that charset
    here (only to look the name up; whether the study may be read so is decided by
    the sender's policy in check_text)."""
    raw = ds.get_item(_INSTITUTION, keep_deferred=True)
    data = raw.value if isinstance(raw, RawDataElement) else None
    if isinstance(data, bytes) and not data.isascii() and single_byte_or_none(ds):
        codec = likely_cjk_charset(data)
        if codec is not None:
            return data.decode(codec).strip(" \x00")
    value = _value(ds, _INSTITUTION)
    return str(value).strip() if value not in (None, "") else ""


def _first_sender(root: Node, network: Network) -> str | None:
    """The sender's facility code before the text is checked: its charset policy
    decides how the text is read (``_sender`` names the sender for the record)."""
    name = next((t for ds in root.datasets if (t := _institution_text(ds))), None)
    found = network.find(name)
    if found is None:
        probe = DicomView(root)
        for path in ("LocalNamespaceEntityID", "UniversalEntityID"):
            found = network.find(probe.first(f"IssuerOfAccessionNumberSequence.{path}", root))
            if found is not None:
                break
    return found.facility if found is not None else None


def _policy(network: Network, facility: str | None) -> CharsetPolicy:
    inst = network.institution(facility)
    default = inst.charset if inst is not None else None
    codec = codec_for(default, location=tag_label(_CHARSET)) if default else None
    prefer = MULTI_BYTE
    if inst is not None and (inst.jurisdiction or "").upper().startswith(("HK", "MO", "TW")):
        prefer = ("utf-8", "big5hkscs", "gb18030")  # Big5 before GB 18030 where it is used
    return CharsetPolicy(facility, default, codec, network.charset_mismatch(facility), prefer)


def _unit(
    study: _Study, index: int, network: Network, default_sender: str | None, limit: int
) -> Unit:
    unit = Unit(b"", index, "dicom", kind="study", control_id=study.uid)
    unit.message_type = "dicom-study"
    unit.issues = list(study.issues)
    if study.error is not None:
        unit.error = study.error
        return unit
    root = _tree(study)
    unit.raw = _manifest(study, root)
    # One warning per code, tag and message, counted over the instances (a 500-slice
    # series with a control character in each gave 500 warnings)
    unit.issues = StudyNotes(
        unit.issues, lambda: _names(study, root), len(study.instances), len(root.children)
    )
    if study.skipped:
        unit.issues.append(_skipped_note(study.skipped, limit))
    try:
        unit.charset = _charset(root.datasets[0])
    except IntakeError as exc:
        unit.error = exc
        return unit
    problems = _charset_issues(unit.charset)
    if problems:
        unit.issues.extend(problems)  # StudyNotes: not +=, which bypasses its append
        _known_charsets_only(root.datasets)
    try:
        policy = _policy(network, _first_sender(root, network) or default_sender)
        instances = [(i.datasets[0], i.label) for s in root.children for i in s.children]
        check_text(instances, policy, unit.issues)
    except GatewayError as exc:  # refused text, or a sender charset the gateway lacks
        unit.error = exc
        return unit
    if unit.charset is None and any(i.code == "intake.charset-default" for i in unit.issues):
        unit.charset = policy.default
    cache: dict[str, str | None] = {}

    def find(name: str) -> str | None:
        if name not in cache:
            inst = network.find(name)
            cache[name] = inst.facility if inst is not None else None
        return cache[name]

    view = DicomView(root, None, unit.charset, find)
    # Before the sender is looked up: what it reads is cached at the study, so a warning
    # (control characters removed) would be lost for the mapping's read of it too
    view.notes = unit.issues
    try:
        view.sender = unit.sender = _sender(view, network) or default_sender
    except IntakeError as exc:  # an InstitutionName or issuer pydicom cannot decode
        unit.error = exc
        return unit
    unit.view = view  # kept when it fails below: its text is read (names, charsets)
    if view.sender is None and _unowned_patient_id(view):
        unit.error = _no_sender()
    return unit


def _unowned_patient_id(view: DicomView) -> bool:
    """A PatientID with no issuer of its own, in a study that names no sender: nothing
    says whose medical record number it is."""
    issuers = ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence.UniversalEntityID")
    has_id = bool(view.first("PatientID", view.root))
    return has_id and not any(view.first(path, view.root) for path in issuers)


def _no_sender() -> IntakeError:
    return IntakeError(
        "dicom-no-sender",
        "the study names no sender: (0008,0080) InstitutionName and the accession number's "
        "issuer are empty and (0010,0021) IssuerOfPatientID too, so nothing says whose "
        "number (0010,0020) PatientID is; name the hospital that sent it with --sender "
        "(gateway convert) or ?sender= (POST /convert), e.g. --sender LAX2",
        location=tag_label(_INSTITUTION),
    )
