"""HL7 v2 reader: bytes → one Unit per message (framing, charset, tokenising)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from ...errors import GatewayError, Issue
from .._unit import Unit
from ._er7 import parse_message, peek_control_id, split_messages
from ._view import Hl7View

if TYPE_CHECKING:
    from ...network import Network

__all__ = ["read_messages"]


def read_messages(
    data: bytes,
    default_charset: Callable[[str], str | None] | None = None,
    *,
    network: Network | None = None,
) -> Iterator[Unit]:
    """One Unit per message of ``data``. ``network`` gives each sender's default charset
    (unless ``default_charset`` is given) and its ``charset_mismatch`` policy; without
    it, single-byte-declared Chinese text is refused."""
    for raw in split_messages(data):
        unit = Unit(raw.data if raw.segments else b"", raw.index, "hl7v2", raw.line)
        unit.control_id = peek_control_id(raw)  # names the message even if decoding fails
        try:
            message = parse_message(raw, default_charset, network)
        except GatewayError as exc:
            unit.error = exc
            yield unit
            continue
        unit.charset = message.charset
        control_id = message.control_id
        # A control id with a control character in it would carry it into every error
        # line and file name: the message is named by its position instead.
        unit.control_id = control_id if control_id and control_id.isprintable() else None
        unit.message_type = message.message_type
        unit.sender = message.msh(4).split(message.separators[1])[0] or None
        unit.issues = [
            Issue("intake.charset-mislabelled", note, "", "MSH-18", "warning")
            for note in message.warnings
        ]
        view = Hl7View(message)
        view.notes = unit.issues  # warnings the view finds while the mapping reads values
        unit.view = view
        yield unit
