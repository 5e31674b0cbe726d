"""The conversion pipeline: intake → mapping → validation → serialisation.

One :class:`Converter` is built once (it loads and compiles the mappings, the
terminology and the network) and then converts any number of inputs. A bad record
becomes a :class:`~gateway.envelope.Record` with its issues; it never stops the
others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson

from .config import Settings
from .envelope import Record
from .errors import ConfigError, GatewayError, Issue
from .intake import FORMATS, Unit, detect_format
from .intake.cda import check_path as cda_path
from .intake.cda import read_documents
from .intake.dicom import check_path as dicom_path
from .intake.dicom import read_studies
from .intake.hl7v2 import check_path as hl7v2_path
from .intake.hl7v2 import read_messages
from .mapping import Env, MappingSet, Terminology
from .network import Network
from .validation import check_bundle

__all__ = ["Converter", "dump_json"]

# Where each format names the field that picks its mapping (for "unsupported" errors).
_TYPE_FIELD = {
    "hl7v2": "MSH-9",
    "dicom": "(0008,0016) SOPClassUID",
    "cda": "/ClinicalDocument/code",
}


def dump_json(resource: object) -> bytes:
    """The gateway's one JSON form: UTF-8, 2-space indent, newline-terminated, stable."""
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n"


class Converter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        self.network = Network.load(self.settings.network)
        self.env = Env(Terminology(self.settings.mappings), self.network)
        self.mappings: dict[str, MappingSet] = {}
        for fmt, path_check in _path_checks().items():
            self.mappings[fmt] = MappingSet(
                self.settings.mappings, fmt, self.env, path_check, _TYPE_FIELD[fmt]
            )

    @property
    def hl7v2(self) -> MappingSet:
        return self.mappings["hl7v2"]

    @property
    def message_types(self) -> list[str]:
        return [t for m in self.mappings.values() for t in m.types]

    def convert(
        self,
        data: bytes,
        source: str | None = None,
        fmt: str = "auto",
        trace: bool = False,
        sender: str | None = None,
    ) -> list[Record]:
        return list(self.iter_convert(data, source, fmt, trace, sender))

    def known_sender(self, facility: str) -> str:
        """The facility code of a sender named by code, key or name; ConfigError when
        the network does not know it (a default sender must give real systems)."""
        inst = self.network.find(facility)
        if inst is None:
            raise ConfigError(
                "unknown-sender",
                f"{facility!r} is not an institution of the network ({self.settings.network})",
            )
        return inst.facility

    def iter_convert(
        self,
        data: bytes,
        source: str | None = None,
        fmt: str = "auto",
        trace: bool = False,
        sender: str | None = None,
    ) -> Iterator[Record]:
        """One Record per message, study or document. ``trace`` also lists, on each
        Record, the input fields holding data that no mapping read (slower: the memo
        steps aside)."""
        kind = detect_format(data) if fmt == "auto" else fmt
        if kind == "unknown":
            # The HL7 v2 reader says precisely what is wrong (no MSH, binary data, ...).
            kind = "hl7v2"
        if kind not in FORMATS:
            record = Record(data, source, 1, format=kind)
            supported = ", ".join(FORMATS)
            problem = f"{kind} input is not supported (supported: {supported})"
            record.issues.append(Issue("intake.unsupported-format", problem, record.label))
            yield record
            return
        for unit in self._read(kind, [(source or "input", data)], sender):
            yield self.finish(unit, source, trace)

    def convert_files(
        self, items: list[tuple[str, bytes]], trace: bool = False, sender: str | None = None
    ) -> Iterator[Record]:
        """DICOM files of one batch, read together: a study's instances may come in
        many files (a folder, a zip archive, several arguments). ``sender`` (a facility
        code of the network) stands in for studies that do not say who sent them."""
        for unit in self._read("dicom", items, sender):
            yield self.finish(unit, None, trace)

    def convert_path(self, path: Path, trace: bool = False) -> list[Record]:
        """A file, or a folder of DICOM files (one study spread over files), as the demo
        and the golden files take them."""
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            items = [(str(p.relative_to(path.parent)), p.read_bytes()) for p in files]
            return list(self.convert_files(items, trace=trace))
        return self.convert(path.read_bytes(), source=path.name, trace=trace)

    def _read(
        self, kind: str, items: list[tuple[str, bytes]], sender: str | None = None
    ) -> Iterator[Unit]:
        if kind == "hl7v2":
            for _, data in items:
                yield from read_messages(data, network=self.network)
        elif kind == "dicom":
            yield from read_studies(items, self.network, sender)
        else:
            for name, data in items:
                yield from read_documents(data, name)

    def finish(self, unit: Unit, source: str | None = None, trace: bool = False) -> Record:
        """Map, validate and serialise one read record."""
        record = Record(unit.raw, source, unit.index, unit.line, unit.format, unit.kind)
        record.control_id = unit.control_id
        record.charset, record.message_type, record.sender = (
            unit.charset,
            unit.message_type,
            unit.sender,
        )
        if unit.error is not None or unit.view is None:
            error = unit.error or GatewayError("intake.unreadable", "the record could not be read")
            record.issues.append(error.with_record(record.label).issue)
            return record
        record.issues.extend(_named(i, record.label) for i in unit.issues)
        seen = len(unit.issues)  # the view may add warnings while the mapping reads it
        view = unit.view
        try:
            mapping = self.mappings[unit.format].for_type(unit.message_type or "")
            if trace:
                view.trace()
            bundle, warnings = mapping.run(view, self.env, self.settings.timezone)
            if trace:
                record.unmapped = view.unmapped()
        except GatewayError as exc:
            record.issues.extend(_named(i, record.label) for i in unit.issues[seen:])
            record.issues.append(exc.with_record(record.label).issue)
            return record
        record.issues.extend(_named(i, record.label) for i in unit.issues[seen:])
        record.issues.extend(_named(w, record.label) for w in warnings)
        problems = check_bundle(bundle, self.settings.validate)
        if problems:
            record.issues.extend(_named(p, record.label) for p in problems)
            return record
        record.bundle = bundle
        record.bundle_json = dump_json(bundle)
        return record


def _path_checks() -> dict[str, Callable[[str], None]]:
    """Each format's path checker: mapping files are checked against it at load time."""
    return {"hl7v2": hl7v2_path, "dicom": dicom_path, "cda": cda_path}


def _named(issue: Issue, label: str) -> Issue:
    return issue if issue.record else dataclasses.replace(issue, record=label)
