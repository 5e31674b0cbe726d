"""The files a command reads: those named, and in named folders the files with one of
the given suffixes, hidden files and folders skipped. ``-`` is stdin.

For DICOM, :func:`dicom_batches` also plans how a batch is read: which files are read
together so that each study is converted whole while only one study's files are held
(docs/architecture.md, "DICOM batches")."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pydicom
from pydicom.tag import Tag

__all__ = ["DicomInput", "dicom_batches", "input_files", "study_of"]

_STUDY_UID = Tag(0x0020, 0x000D)


def input_files(paths: Iterable[str], suffixes: Iterable[str]) -> list[str]:
    wanted = {s.lower() for s in suffixes}
    found: list[str] = []
    for name in paths:
        path = Path(name)
        if name == "-" or not path.is_dir():
            found.append(name)
            continue
        for child in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
            if child.is_file() and not hidden and child.suffix.lower() in wanted:
                found.append(str(child))
    return found


@dataclass(slots=True)
class DicomInput:
    """One DICOM input of a batch: a file read when its batch comes (``path``), or bytes
    already in hand (stdin). ``study`` is its Study Instance UID as peeked at from its
    header (None: not peeked, or not a single Part 10 instance: an archive, DICOM JSON,
    a file that does not read)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    study: str | None = None

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def folder(self) -> str:
        """The group the DICOM reader gives a plain file (its folder)."""
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""


def study_of(item: DicomInput) -> str | None:
    """The Study Instance UID in a Part 10 file's header, read up to that element; None
    for anything else (the reader says what is wrong with it, when its batch is read)."""
    try:
        if item.data is not None:
            return _peek(io.BytesIO(item.data))
        assert item.path is not None
        with item.path.open("rb") as fp:
            return _peek(fp)
    except OSError:
        return None


def _peek(fp: IO[bytes]) -> str | None:
    head = fp.read(132)
    if head[128:132] != b"DICM":
        return None  # zip archive, DICOM JSON, raw dataset: read whole with their batch
    fp.seek(0)
    try:
        with warnings.catch_warnings():  # the reader reports what matters, later
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=[_STUDY_UID])
        value = ds.get(_STUDY_UID)
    except Exception:  # any fault: the file is read (and its fault reported) with its folder
        return None
    uid = str(value.value).strip().rstrip("\x00") if value is not None and value.value else ""
    return uid or None


def dicom_batches(items: Sequence[DicomInput]) -> list[list[DicomInput]]:
    """The files to read together, in order of their first file, each batch holding
    whole studies: files of one Study Instance UID go together wherever they are; a file
    whose study is unknown (an archive, DICOM JSON, an unreadable file) goes with every
    file of its folder, as the reader lets such a file fail the studies of its folder.
    ``item.study`` is filled in (peeked at from each header)."""
    for item in items:
        item.study = study_of(item)
    unknown = {item.folder for item in items if item.study is None}
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys: list[str] = []
    for item in items:
        key = f"study:{item.study}" if item.study is not None else f"folder:{item.folder}"
        if item.study is not None and item.folder in unknown:
            parent[find(key)] = find(f"folder:{item.folder}")
        keys.append(key)
    batches: dict[str, list[DicomInput]] = {}
    for item, key in zip(items, keys, strict=True):
        batches.setdefault(find(key), []).append(item)
    return list(batches.values())
