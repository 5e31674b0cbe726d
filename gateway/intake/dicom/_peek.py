"""Which studies a DICOM input holds, told from its headers before the batch is read.

``gateway convert`` reads a DICOM batch whole studies at a time (gateway/inputs.py,
``dicom_batches``): the files of one study go together wherever they are. A loose Part
10 file names its study in its header; an archive or a DICOM JSON document may hold
instances of several studies, and the same study may also come as loose files (a PACS
export of a study as a zip, plus the images sent later). An imaging department expects
that study converted once, whole, from all its files: so the studies of an archive's
members (each header read up to its Study Instance UID, the pixel data never inflated)
and of a JSON document's objects are told too, and the archive goes with them.

Only what grouping needs is read, and nothing here raises: what cannot be told makes
the input ``whole = False`` (it then goes with every file of its folder, as before),
and the reader says what is wrong when the batch is read.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import pydicom
from pydicom.tag import Tag

from ._faults import ARCHIVE_FAULTS
from ._reader import (
    MAX_JSON_BYTES,
    MAX_MEMBERS,
    MAX_TOTAL_BYTES,
    _kind,
    _refused,
    sent_uid,
    uid_problem,
)
from ._reader import _json_study as _reader_json_study

__all__ = ["Studies", "studies_in"]

_STUDY_UID = Tag(0x0020, 0x000D)
_HEAD = 132  # the preamble and 'DICM': enough to tell a file's kind


@dataclass(frozen=True, slots=True)
class Studies:
    """The Study Instance UIDs an input names, in order of first appearance; ``whole``
    when every instance in it was told (False: one could not be, or the input is no
    DICOM the look understands)."""

    uids: tuple[str, ...] = ()
    whole: bool = False


def studies_in(path: Path | None = None, data: bytes | None = None) -> Studies:
    """The studies of one input (a file at ``path``, or ``data`` in hand)."""
    try:
        if data is not None:
            return _studies(io.BytesIO(data), len(data))
        assert path is not None
        with path.open("rb") as fp:
            return _studies(fp, path.stat().st_size)
    except OSError:
        return Studies()  # the read, with its batch, reports it


def _studies(fp: IO[bytes], size: int) -> Studies:
    kind = _kind(fp.read(_HEAD))
    fp.seek(0)
    if kind in ("part10", "raw"):
        uid = _instance_study(fp, force=kind == "raw")
        return Studies((uid,), True) if uid is not None else Studies()
    if kind == "zip":
        return _archive(fp)
    if kind == "json":
        return _json(fp.read()) if size <= MAX_JSON_BYTES else Studies()
    return Studies()


def _instance_study(fp: IO[bytes], force: bool = False) -> str | None:
    """The Study Instance UID of a Part 10 header (or a dataset without preamble),
    read up to that element; None when it cannot be read."""
    try:
        with warnings.catch_warnings():  # the reader reports what matters, later
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                fp, stop_before_pixels=True, force=force, specific_tags=[_STUDY_UID]
            )
        uid = sent_uid(ds, _STUDY_UID)
    except Exception:  # any fault: the reader names it when the batch is read
        return None
    # One that is no UID leaves the study unknown, as the reader has it (see _json_study)
    return uid if uid and uid_problem(uid) is None else None


def _archive(fp: IO[bytes]) -> Studies:
    """The studies of a zip archive's members, read as the reader reads them: the
    members it skips (not DICOM, litter) or refuses (encrypted, LZMA, too large: they
    fail the studies of their archive, which are here anyway) tell nothing."""
    try:
        archive = zipfile.ZipFile(fp)
        members = [i for i in archive.infolist() if not i.filename.endswith("/")]
    except ARCHIVE_FAULTS:
        return Studies()
    if (
        not members
        or len(members) > MAX_MEMBERS
        or sum(i.file_size for i in members) > MAX_TOTAL_BYTES
    ):
        return Studies()  # an error record of its own
    uids: dict[str, None] = {}
    whole = True
    for info in members:
        try:
            found = list(_member(archive, info))
        except ARCHIVE_FAULTS:
            found = [None]  # damaged: the reader fails the archive's studies with it
        for uid in found:
            if uid is None:
                whole = False
            else:
                uids.setdefault(uid)
    return Studies(tuple(uids), whole)


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[str | None]:
    base = info.filename.rsplit("/", 1)[-1]
    litter = base.startswith(".") or info.filename.startswith("__MACOSX/")
    refused = info.flag_bits & 0x1 or info.compress_type == zipfile.ZIP_LZMA
    if litter or refused or not info.filename or _refused(info) is not None:
        return  # skipped, or a broken member of its archive's studies (see _archive)
    with archive.open(info) as member:
        kind = _kind(member.read(_HEAD))
        if kind in ("zip", "other"):
            return  # not an instance: skipped by the reader
        member.seek(0)
        if kind == "json":
            if info.file_size > MAX_JSON_BYTES:
                return  # refused by the reader
            told = _json(member.read())
            yield from told.uids
            if not told.whole:
                yield None
        else:
            yield _instance_study(member, force=kind == "raw")


def _json(data: bytes) -> Studies:
    """The studies of a DICOM JSON document's objects (PS3.18 Annex F)."""
    try:
        doc = orjson.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError:
        return Studies()
    objects: list[Any] = doc if isinstance(doc, list) else [doc]
    uids = [_json_study(obj) for obj in objects]
    known = tuple(dict.fromkeys(u for u in uids if u is not None))
    return Studies(known, all(u is not None for u in uids))


def _json_study(obj: Any) -> str | None:
    # As the reader tells it: None when absent or no UID (the study is then unknown)
    return _reader_json_study(obj) if isinstance(obj, dict) else None
