"""The files a command reads: those named, and in named folders the files with one of
the given suffixes, hidden files and folders skipped. ``-`` is stdin.

For DICOM, :func:`dicom_batches` also plans how a batch is read: which files are read
together so that each study is converted whole while only one study's files are held
(docs/architecture.md, "DICOM batches")."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .intake.dicom import Studies, studies_in

__all__ = ["RECORD_SUFFIXES", "DicomInput", "dicom_batches", "input_files"]

# Files taken from a folder (a file named on the command line is always read). DICOM
# files often have no suffix; JSON (DICOM JSON) is read only when named, so that a
# folder of converted Bundles is not taken for input.
RECORD_SUFFIXES = frozenset(
    {".hl7", ".er7", ".txt", ".msg", ".dat", ".mllp", ".dcm", ".dicom", ".zip", ".xml", ".cda", ""}
)


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
    already in hand (stdin). ``studies``: the Study Instance UIDs peeked at from its
    header, its archive members' or its JSON objects' (``whole``: every instance in it
    told; not yet peeked, or a file that does not read: not whole)."""

    name: str
    path: Path | None = None
    data: bytes | None = None
    studies: Studies = field(default_factory=Studies)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    @property
    def folder(self) -> str:
        """The group the DICOM reader gives a plain file (its folder)."""
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""


def dicom_batches(items: Sequence[DicomInput]) -> list[list[DicomInput]]:
    """The files to read together, in order of their first file, each batch holding
    whole studies: files of one Study Instance UID go together wherever they are, an
    archive (or DICOM JSON document) with every study its members name, so a study
    sent as an archive and loose files is read, and converted, once and whole; a file
    holding an instance whose study is unknown (an unreadable file or member) goes with
    every file of its folder, as the reader lets such a file fail the studies of its
    folder. ``item.studies`` is filled in (peeked at from each header)."""
    for item in items:
        item.studies = studies_in(item.path, item.data)
    unknown = {item.folder for item in items if not item.studies.whole}
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    keys: list[str] = []
    for n, item in enumerate(items):
        told = [f"study:{uid}" for uid in item.studies.uids]
        key = told[0] if told else f"folder:{item.folder}" if item.folder in unknown else f"#{n}"
        for other in told[1:]:  # one archive, several studies: read together
            parent[find(other)] = find(key)
        if told and item.folder in unknown:
            parent[find(key)] = find(f"folder:{item.folder}")
        keys.append(key)
    batches: dict[str, list[DicomInput]] = {}
    for item, key in zip(items, keys, strict=True):
        batches.setdefault(find(key), []).append(item)
    return list(batches.values())
