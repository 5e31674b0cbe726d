"""DICOM reader: Part 10 files, zip archives of them and DICOM JSON → one Unit per study.

Instances are grouped by Study Instance UID across every item of a batch (a study's
files may come from a folder, an archive and loose files at once). Only headers are
read (``stop_before_pixels``). A file that cannot be read, or has no Study Instance
UID, is an error record of its own; an instance without Series or SOP Instance UID
fails its study (a partial ImagingStudy would misstate the counts); neither stops the
other studies.
"""

from __future__ import annotations

import gc
import io
import lzma
import re
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from pydicom import Dataset, config, dcmread
from pydicom.charset import python_encoding
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.multival import MultiValue

from ...errors import IntakeError, Issue
from ...network import Network
from .._unit import Unit
from ._paths import tag_label
from ._view import DicomView, Node, _element

__all__ = ["MAX_MEMBERS", "MAX_MEMBER_BYTES", "MAX_TOTAL_BYTES", "read_studies"]

# Zip-bomb guards. Members are streamed and read only up to the pixel data, but their
# declared sizes still bound what an archive may claim (zipfile enforces them).
MAX_MEMBERS = 20_000
MAX_MEMBER_BYTES = 2 << 30  # one file of an archive
MAX_TOTAL_BYTES = 32 << 30  # all files of an archive
MAX_JSON_BYTES = 256 << 20  # a DICOM JSON member is read whole
_MAX_RATIO = 200  # uncompressed/compressed beyond 1 MiB: pixel data never packs that well
_RATIO_FLOOR = 1 << 20

_STUDY, _SERIES, _SOP = 0x0020000D, 0x0020000E, 0x00080018
_CHARSET = 0x00080005
# What zipfile and its decompressors raise on a damaged member (ValueError: a negative
# seek to a local header; NotImplementedError: an unknown compression method).
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    NotImplementedError,
    zlib.error,
    lzma.LZMAError,
)
_UNSAFE = re.compile(r"[^\w.\-/ #()\[\]+]")


def _safe(name: str) -> str:
    """A file name fit for a message: no markup or control characters, bounded."""
    cleaned = _UNSAFE.sub("_", name)
    return cleaned if len(cleaned) <= 160 else "…" + cleaned[-159:]


@dataclass(slots=True)
class _Instance:
    ds: Dataset
    name: str
    size: int


@dataclass(slots=True, eq=False)
class _Study:
    uid: str
    instances: dict[str, _Instance] = field(default_factory=dict)  # by SOP Instance UID
    series: dict[str, list[_Instance]] = field(default_factory=dict)
    issues: list[Issue] = field(default_factory=list)
    error: IntakeError | None = None


def read_studies(
    items: list[tuple[str, bytes]], network: Network, default_sender: str | None = None
) -> Iterator[Unit]:
    """One Unit per study (in order of first appearance), and one error Unit per item
    that holds no readable instance of a study. ``default_sender`` (a facility code) is
    the sender of studies that name no institution and no accession issuer: the
    hospital whose PACS the files were exported from."""
    # pydicom's value validation warns with the offending value (a name, a birth date):
    # no patient data may reach the logs, and the gateway reports its own problems.
    config.settings.reading_validation_mode = config.IGNORE
    slots: list[_Study | IntakeError] = []
    studies: dict[str, _Study] = {}
    # pydicom allocates many small objects per header, none of them garbage until the
    # study is mapped: the cyclic collector's passes cost ~25 % of the read (bench/).
    paused = gc.isenabled()
    gc.disable()
    try:
        _read_all(items, studies, slots)
    finally:
        if paused:
            gc.enable()
    for index, slot in enumerate(slots, 1):
        if isinstance(slot, IntakeError):
            yield Unit(b"", index, "dicom", kind="study", error=slot)
        else:
            yield _unit(slot, index, network, default_sender)


def _read_all(
    items: list[tuple[str, bytes]], studies: dict[str, _Study], slots: list[_Study | IntakeError]
) -> None:
    for name, data in items:
        notes: list[Issue] = []
        touched: list[_Study] = []
        for got in _datasets(name, data, notes):
            if isinstance(got, IntakeError):
                slots.append(got)
                continue
            try:
                study = _place(got, studies, slots)
            except IntakeError as exc:  # a Study Instance UID pydicom cannot decode
                slots.append(_in_file(got.name, exc))
                continue
            if study is not None and study not in touched:
                touched.append(study)
            elif study is None:
                slots.append(_missing(got.name, _STUDY))
        for study in touched:  # an archive's skipped members concern the studies in it
            study.issues.extend(n for n in notes if n not in study.issues)
        if notes and not touched:
            slots.append(
                IntakeError(
                    "dicom-no-instances",
                    f"{_safe(name)}: no DICOM instance in the archive "
                    f"({len(notes)} member(s) skipped)",
                )
            )


def _value(ds: Dataset, tag: int) -> Any:
    """The decoded value at ``tag`` (None when absent). pydicom decodes lazily and
    raises on a damaged element (an unknown VR, a value its VR cannot hold): that is
    IntakeError ``dicom-bad-value``, named by tag, never by value."""
    elem = _element(ds, tag, tag_label(tag))
    return elem.value if elem is not None else None


def _in_file(name: str, exc: IntakeError) -> IntakeError:
    return IntakeError(exc.code, f"{_safe(name)}: {exc.issue.message}", location=exc.issue.location)


def _ascii(ds: Dataset, tag: int) -> str | None:
    """A UI or IS value straight from its raw bytes: grouping and ordering read these
    from every instance, and pydicom's general conversion costs ~8x more. Anything
    unusual (implicit VR, non-ASCII, several values) takes the checked path."""
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and raw.VR in ("UI", "IS") and raw.value is not None:
        try:
            text = raw.value.decode("ascii").strip(" \x00")
        except (UnicodeDecodeError, AttributeError):
            pass
        else:
            if "\\" not in text:
                return text
    value = _value(ds, tag)
    return str(value).strip().rstrip("\x00") if value not in (None, "") else ""


def _uid(ds: Dataset, tag: int) -> str | None:
    return _ascii(ds, tag) or None


def _missing(name: str, tag: int) -> IntakeError:
    return IntakeError(
        "dicom-missing-uid",
        f"{_safe(name)}: {tag_label(tag)} is empty, so the instance cannot be placed",
        location=tag_label(tag),
    )


def _place(inst: _Instance, studies: dict[str, _Study], slots: list[Any]) -> _Study | None:
    """File the instance under its study and series; None when it has no study UID."""
    study_uid = _uid(inst.ds, _STUDY)
    if study_uid is None:
        return None
    study = studies.get(study_uid)
    if study is None:
        study = studies[study_uid] = _Study(study_uid)
        slots.append(study)
    try:
        series_uid, sop_uid = _uid(inst.ds, _SERIES), _uid(inst.ds, _SOP)
    except IntakeError as exc:
        if study.error is None:
            study.error = _in_file(inst.name, exc)
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
                f"SOP instance {sop_uid} is in {_safe(first.name)} and again in "
                f"{_safe(inst.name)}; counted once",
                location=tag_label(_SOP),
                severity="warning",
            )
        )
        return study
    study.instances[sop_uid] = inst
    study.series.setdefault(series_uid, []).append(inst)
    return study


# -- items -> datasets ---------------------------------------------------------------------
def _datasets(name: str, data: bytes, notes: list[Issue]) -> Iterator[_Instance | IntakeError]:
    kind = _kind(data)
    try:
        if kind == "zip":
            yield from _archive(name, data, notes)
        elif kind == "json":
            yield from _json(name, data)
        elif kind in ("part10", "raw"):
            yield _Instance(_part10(name, io.BytesIO(data), kind == "raw"), name, len(data))
        else:
            raise IntakeError(
                "dicom-not-dicom",
                f"{_safe(name)}: not DICOM (no 'DICM' marker at byte 128), "
                "DICOM JSON or a zip archive",
            )
    except IntakeError as exc:
        yield exc


def _kind(head: bytes) -> str:
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "part10"
    stripped = head[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped[:1] in (b"{", b"["):
        return "json"
    if head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) > 8:
        return "raw"  # a dataset written without the 128-byte preamble
    return "other"


def _part10(name: str, fp: IO[bytes], force: bool = False) -> Dataset:
    try:
        with warnings.catch_warnings():  # charset and VR complaints: intake reports its own
            warnings.simplefilter("ignore")
            return dcmread(fp, stop_before_pixels=True, force=force)
    except Exception as exc:  # pydicom raises many kinds on damaged data; name none of it
        raise IntakeError(
            "dicom-unreadable",
            f"{_safe(name)}: the DICOM header cannot be read ({type(exc).__name__})",
        ) from None


def _no_bulk(tag: str, vr: str, uri: str) -> None:
    return None  # BulkDataURI values (pixel data elsewhere) are not fetched


def _json(name: str, data: bytes) -> Iterator[_Instance | IntakeError]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise IntakeError("dicom-json", f"{_safe(name)}: not valid JSON") from None
    objects = doc if isinstance(doc, list) else [doc]
    for n, obj in enumerate(objects, 1):
        where = name if len(objects) == 1 else f"{name}[{n}]"
        if not isinstance(obj, dict):
            yield IntakeError("dicom-json", f"{_safe(where)}: not a DICOM JSON object")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = Dataset.from_json(obj, bulk_data_uri_handler=_no_bulk)
        except Exception as exc:  # malformed attribute objects: pydicom's own exceptions
            yield IntakeError(
                "dicom-json",
                f"{_safe(where)}: not a DICOM JSON dataset (PS3.18 Annex F) ({type(exc).__name__})",
            )
            continue
        yield _Instance(ds, where, len(data) // len(objects))


def _skip(notes: list[Issue], member: str, why: str) -> None:
    notes.append(
        Issue("intake.skipped-member", f"{_safe(member)}: {why}; skipped", severity="warning")
    )


def _archive(name: str, data: bytes, notes: list[Issue]) -> Iterator[_Instance | IntakeError]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise IntakeError("dicom-zip", f"{_safe(name)}: not a readable zip archive") from None
    members = [i for i in archive.infolist() if not i.is_dir()]
    if len(members) > MAX_MEMBERS:
        raise IntakeError(
            "dicom-zip", f"{_safe(name)}: {len(members)} files, more than {MAX_MEMBERS} allowed"
        )
    if sum(i.file_size for i in members) > MAX_TOTAL_BYTES:
        raise IntakeError(
            "dicom-zip", f"{_safe(name)}: unpacks to more than {MAX_TOTAL_BYTES >> 30} GiB"
        )
    for info in members:
        member = f"{name}/{info.filename}"
        base = info.filename.rsplit("/", 1)[-1]
        if base.startswith(".") or info.filename.startswith("__MACOSX/"):
            continue  # finder and editor litter, like the hidden files a folder walk skips
        why = _refused(info)
        if why:
            _skip(notes, member, why)
            continue
        try:
            yield from _member(archive, info, member, notes)
        except _DAMAGED:
            _skip(notes, member, "damaged in the archive")


def _refused(info: zipfile.ZipInfo) -> str | None:
    if info.flag_bits & 0x1:
        return "encrypted"
    if info.file_size > MAX_MEMBER_BYTES:
        return f"larger than {MAX_MEMBER_BYTES >> 30} GiB"
    if info.file_size > _RATIO_FLOOR and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
        return "compressed beyond any DICOM file (a zip bomb?)"
    return None


def _member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: str, notes: list[Issue]
) -> Iterator[_Instance | IntakeError]:
    with archive.open(info) as fp:
        kind = _kind(fp.read(132))
        if kind == "json":
            if info.file_size > MAX_JSON_BYTES:
                _skip(notes, member, "a DICOM JSON file too large to read whole")
                return
            fp.seek(0)
            yield from _json(member, fp.read())
        elif kind in ("part10", "raw"):
            fp.seek(0)  # a member is streamed: dcmread stops at the pixel data
            try:
                ds = _part10(member, fp, kind == "raw")
            except IntakeError as exc:
                _skip(notes, member, exc.issue.message.split(": ", 1)[-1])
                return
            yield _Instance(ds, member, info.file_size)
        elif kind == "zip":
            _skip(notes, member, "an archive inside the archive")
        else:
            _skip(notes, member, "not a DICOM file")


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


def _unit(study: _Study, index: int, network: Network, default_sender: str | None) -> Unit:
    unit = Unit(b"", index, "dicom", kind="study", control_id=study.uid)
    unit.message_type = "dicom-study"
    unit.issues = list(study.issues)
    if study.error is not None:
        unit.error = study.error
        return unit
    root = _tree(study)
    unit.raw = _manifest(study, root)
    try:
        unit.charset = _charset(root.datasets[0])
    except IntakeError as exc:
        unit.error = exc
        return unit
    problems = _charset_issues(unit.charset)
    if problems:
        unit.issues += problems
        _known_charsets_only(root.datasets)
    cache: dict[str, str | None] = {}

    def find(name: str) -> str | None:
        if name not in cache:
            inst = network.find(name)
            cache[name] = inst.facility if inst is not None else None
        return cache[name]

    view = DicomView(root, None, unit.charset, find)
    try:
        view.sender = unit.sender = _sender(view, network) or default_sender
    except IntakeError as exc:  # an InstitutionName or issuer pydicom cannot decode
        unit.error = exc
        return unit
    view.notes = unit.issues
    unit.view = view
    return unit
