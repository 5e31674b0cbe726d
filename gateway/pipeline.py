"""The conversion pipeline: intake → mapping → validation → serialisation.

One :class:`Converter` is built once (it loads and compiles the mappings, the
terminology and the network) and then converts any number of inputs. A bad record
becomes a :class:`~gateway.envelope.Record` with its issues; it never stops the
others.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import orjson

from .config import Settings
from .envelope import Record
from .errors import GatewayError, Issue
from .intake import FORMATS, detect_format
from .intake.hl7v2 import (
    Hl7View,
    RawMessage,
    check_path,
    parse_message,
    peek_control_id,
    split_messages,
)
from .mapping import Env, MappingSet, Terminology
from .network import Network
from .validation import check_bundle

__all__ = ["Converter", "dump_json"]


def dump_json(resource: object) -> bytes:
    """The gateway's one JSON form: UTF-8, 2-space indent, newline-terminated, stable."""
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n"


class Converter:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.load()
        self.network = Network.load(self.settings.network)
        self.env = Env(Terminology(self.settings.mappings), self.network)
        self.hl7v2 = MappingSet(self.settings.mappings, "hl7v2", self.env, check_path)

    @property
    def message_types(self) -> list[str]:
        return self.hl7v2.types

    def convert(
        self, data: bytes, source: str | None = None, fmt: str = "auto", trace: bool = False
    ) -> list[Record]:
        return list(self.iter_convert(data, source, fmt, trace))

    def iter_convert(
        self, data: bytes, source: str | None = None, fmt: str = "auto", trace: bool = False
    ) -> Iterator[Record]:
        """One Record per message. ``trace`` also lists, on each Record, the input fields
        holding data that no mapping read (slower: the memo steps aside)."""
        kind = detect_format(data) if fmt == "auto" else fmt
        if kind == "unknown":
            # The HL7 v2 reader says precisely what is wrong (no MSH, binary data, ...).
            kind = "hl7v2"
        if kind != "hl7v2":
            record = Record(data, source, 1, format=kind)
            supported = ", ".join(FORMATS)
            problem = f"{kind} input is not supported yet (supported: {supported})"
            record.issues.append(Issue("intake.unsupported-format", problem, record.label))
            yield record
            return
        for raw in split_messages(data):
            yield self.convert_hl7v2(raw, source, trace)

    def convert_hl7v2(
        self, raw: RawMessage, source: str | None = None, trace: bool = False
    ) -> Record:
        record = Record(raw.data if raw.segments else b"", source, raw.index, raw.line, "hl7v2")
        record.control_id = peek_control_id(raw)  # names the message even if decoding fails
        try:
            message = parse_message(raw, self.network.charset)
            record.charset = message.charset
            record.control_id = message.control_id or None
            record.message_type = message.message_type
            record.sender = message.msh(4).split(message.separators[1])[0] or None
            for note in message.warnings:
                record.issues.append(
                    Issue("intake.charset-mislabelled", note, record.label, "MSH-18", "warning")
                )
            mapping = self.hl7v2.for_type(message.message_type)
            view = Hl7View(message)
            if trace:
                view.trace()
            bundle, warnings = mapping.run(view, self.env, self.settings.timezone)
            if trace:
                record.unmapped = view.unmapped()
        except GatewayError as exc:
            record.issues.append(exc.with_record(record.label).issue)
            return record
        record.issues.extend(_named(w, record.label) for w in warnings)
        problems = check_bundle(bundle, self.settings.validate)
        if problems:
            record.issues.extend(_named(p, record.label) for p in problems)
            return record
        record.bundle = bundle
        record.bundle_json = dump_json(bundle)
        return record


def _named(issue: Issue, label: str) -> Issue:
    return issue if issue.record else dataclasses.replace(issue, record=label)
