"""HL7 v2 reader: bytes → one Unit per message (framing, charset, tokenising)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from ...errors import GatewayError, Issue
from .._unit import Unit
from ._er7 import parse_message, peek_control_id, split_messages
from ._view import Hl7View

__all__ = ["read_messages"]


def read_messages(data: bytes, default_charset: Callable[[str], str | None]) -> Iterator[Unit]:
    for raw in split_messages(data):
        unit = Unit(raw.data if raw.segments else b"", raw.index, "hl7v2", raw.line)
        unit.control_id = peek_control_id(raw)  # names the message even if decoding fails
        try:
            message = parse_message(raw, default_charset)
        except GatewayError as exc:
            unit.error = exc
            yield unit
            continue
        unit.charset = message.charset
        unit.control_id = message.control_id or None
        unit.message_type = message.message_type
        unit.sender = message.msh(4).split(message.separators[1])[0] or None
        unit.issues = [
            Issue("intake.charset-mislabelled", note, "", "MSH-18", "warning")
            for note in message.warnings
        ]
        unit.view = Hl7View(message)
        yield unit
