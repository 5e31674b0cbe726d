"""HL7 v2 reader: bytes → one Unit per message (framing, charset, tokenising).

``read_messages`` takes a whole input; ``stream_messages`` takes it as chunks (a large
file read piece by piece) and holds only the message being cut, so memory does not grow
with the input. Both split the same way: ``stream_raw_messages`` gives exactly what
``split_messages`` gives for the joined chunks (tests/intake/hl7v2/test_stream.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from ...errors import GatewayError, IntakeError
from .._unit import Unit
from ._er7 import (
    _BINARY,
    _BOM,
    _CONTROL_BYTES,
    _HL7_START,
    _UTF16,
    RawMessage,
    _control_byte_error,
    _frames,
    _line_ends,
    _split_frame,
    parse_message,
    peek_control_id,
    split_messages,
)
from ._view import Hl7View

if TYPE_CHECKING:
    from ...network import Network

__all__ = ["read_messages", "stream_messages", "stream_raw_messages"]

# A line that starts a message in a plain (unframed) input: every such line begins a new
# message whatever came before it, so the input can be cut just before it.
_MESSAGE_START = re.compile(rb"[\r\n](?=(?:\xef\xbb\xbf)?MSH)")
_HEAD = 4096  # bytes looked at to tell framing, UTF-16 and a text start


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
        yield _unit(raw, default_charset, network)


def stream_messages(
    chunks: Iterable[bytes],
    default_charset: Callable[[str], str | None] | None = None,
    *,
    network: Network | None = None,
) -> Iterator[Unit]:
    """:func:`read_messages` over an input given as chunks, one message at a time."""
    for raw in stream_raw_messages(chunks):
        yield _unit(raw, default_charset, network)


def _unit(
    raw: RawMessage,
    default_charset: Callable[[str], str | None] | None,
    network: Network | None,
) -> Unit:
    data = raw.data if raw.segments else b""
    unit = Unit(data, raw.index, "hl7v2", raw.line)
    try:
        message = parse_message(raw, default_charset, network, data=data or None)
    except GatewayError as exc:
        unit.control_id = peek_control_id(raw)  # names the message though it did not decode
        unit.error = exc
        return unit
    unit.charset = message.charset
    # MSH-n is msh[n]: parse_message saw MSH-12, so MSH-4 and MSH-10 are there.
    msh = message.segments[0]
    control_id = msh[10]
    # A control id with a control character in it would carry it into every error
    # line and file name: the message is named by its position instead.
    unit.control_id = control_id if control_id and control_id.isprintable() else None
    unit.message_type = message.message_type
    unit.sender = msh[4].split(message.separators[1])[0] or None
    unit.issues = list(raw.notes)
    if message.notes:  # before the batch notes
        unit.issues[:0] = message.notes
    view = Hl7View(message)
    view.notes = unit.issues  # warnings the view finds while the mapping reads values
    unit.view = view
    return unit


# -- splitting a stream --------------------------------------------------------------------


class _Chunks:
    """The input's chunks with a look-ahead buffer; ``eof`` once they are all read."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self.buf = b""
        self.eof = False

    def more(self) -> bool:
        """Append the next non-empty chunk to ``buf``; False at the end."""
        for chunk in self._it:
            if chunk:
                self.buf += chunk
                return True
        self.eof = True
        return False

    def fill(self, size: int) -> None:
        while len(self.buf) < size and self.more():
            pass

    def rest(self) -> bytes:
        while self.more():
            pass
        return self.buf


class _Count:
    """Positions across the whole input: messages so far and the next line number."""

    def __init__(self) -> None:
        self.messages = 0
        self.line = 1


def stream_raw_messages(chunks: Iterable[bytes]) -> Iterator[RawMessage]:
    """What ``split_messages(b"".join(chunks))`` returns, one message at a time, holding
    only the part of the input not yet cut (about one chunk and one message).

    The input is cut only where the whole-input split also ends a message: before a line
    starting with ``MSH`` (plain and batch files), or at an MLLP start block. An input
    that does not start as HL7 text is read whole, as ``split_messages`` must look at all
    of it to tell binary data from text (it is refused either way)."""
    src = _Chunks(chunks)
    src.fill(_HEAD)
    head = src.buf if not src.eof else src.buf.rstrip(b"\x1a")
    if _UTF16.match(head) or not head.lstrip(_BOM + b" \t\r\n\x0b").startswith(_HL7_START):
        yield from split_messages(src.rest())
        return
    count = _Count()
    stripped = head.lstrip(b" \t\r\n")
    if stripped.startswith(_BOM + b"\x0b"):
        stripped = stripped[len(_BOM) :]
    if stripped.startswith(b"\x0b"):
        yield from _stream_frames(src, count)
    else:
        yield from _stream_plain(src, count)
    if count.messages == 0:
        err = IntakeError("empty", "no HL7 v2 message found: the input is empty")
        yield RawMessage(1, 1, [], err)


def _stream_plain(src: _Chunks, count: _Count) -> Iterator[RawMessage]:
    while True:
        if src.eof:
            yield from _cut(src.buf.rstrip(b"\x1a"), count)
            return
        cut = _last_start(src.buf)
        if cut > 0:
            piece, src.buf = src.buf[:cut], src.buf[cut:]
            yield from _cut(piece, count)
        src.more()


def _last_start(buf: bytes) -> int:
    """Where the last message start visible in ``buf`` begins (0: none)."""
    end = len(buf)
    while True:
        at = buf.rfind(b"MSH", 0, end)
        if at <= 0:
            return 0
        start = at - len(_BOM) if buf[:at].endswith(_BOM) else at
        if start > 0 and _MESSAGE_START.match(buf, start - 1):
            return start
        end = at + 2  # look further back (a match ending before "SH")


def _cut(piece: bytes, count: _Count) -> Iterator[RawMessage]:
    """The messages of one plain piece (or frame payload), numbered in the whole input."""
    out: list[RawMessage] = []
    _split_frame(piece, count.line, out)
    yield from _numbered(out, piece, count)
    count.line += _line_ends(piece)


def _numbered(out: list[RawMessage], piece: bytes, count: _Count) -> Iterator[RawMessage]:
    clean = len(piece.translate(None, _CONTROL_BYTES)) == len(piece)
    for message in out:
        count.messages += 1
        message.index = count.messages
        if not clean and message.error is None:
            hit = _BINARY.search(message.data)
            if hit:
                message.error = _control_byte_error(message.data, hit.start())
        message.controls = not clean
        yield message


def _stream_frames(src: _Chunks, count: _Count) -> Iterator[RawMessage]:
    """MLLP: each start block begins a frame (as ``_frames`` splits them)."""
    first = src.buf.find(b"\x0b")
    count.line = 1 + _line_ends(src.buf[:first])
    src.buf = src.buf[first + 1 :]
    while True:
        end = src.buf.find(b"\x0b")
        while end < 0 and src.more():
            end = src.buf.find(b"\x0b")
        if end < 0:  # the last frame
            yield from _frame(src.buf.rstrip(b"\x1a"), count)
            return
        chunk, src.buf = src.buf[:end], src.buf[end + 1 :]
        yield from _frame(chunk, count)


def _frame(chunk: bytes, count: _Count) -> Iterator[RawMessage]:
    start = count.line
    for payload, line, error in _frames(b"\x0b" + chunk):
        at = start + line - 1
        out: list[RawMessage] = []
        if error is not None:  # its location names the line in the whole input
            moved = IntakeError(error.code, error.issue.message, location=f"line {at}")
            out.append(RawMessage(0, at, [], moved))
        else:
            _split_frame(payload, at, out)
        yield from _numbered(out, b"\x0b" + chunk, count)
    count.line = start + _line_ends(chunk)
