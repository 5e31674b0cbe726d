"""HL7 v2 ER7 intake: framing, charsets, tokenising and terser-path look-ups."""

from ._er7 import (
    Message,
    RawMessage,
    parse_message,
    peek_control_id,
    split_messages,
    undeclared_msh_fields,
)
from ._reader import read_messages, stream_messages, stream_raw_messages
from ._view import Hl7View, Position, check_path

__all__ = [
    "Hl7View",
    "Message",
    "Position",
    "RawMessage",
    "check_path",
    "parse_message",
    "peek_control_id",
    "read_messages",
    "split_messages",
    "stream_messages",
    "stream_raw_messages",
    "undeclared_msh_fields",
]
