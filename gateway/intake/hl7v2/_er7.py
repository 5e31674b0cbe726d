"""ER7 (pipe-delimited) HL7 v2: split a file into messages, decode, tokenise.

Order matters. Big5 and GB18030 trail bytes include ``| \\ ^ ~`` (許 is B3 5C), so a
message is decoded to text *before* it is split on its delimiters. Segment ends
(CR, LF) and MLLP frame bytes (0x0B, 0x1C) never occur inside a multi-byte
character in any supported charset, so message and segment boundaries can be found
on the bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

from ...datafiles import data_dir, load_data_file
from ...errors import ConfigError, IntakeError, Issue, shape
from .._charset import (
    MULTI_BYTE,
    Decoded,
    charset_name,
    codec_for,
    decode_strict,
    mislabelled_as,
    reads_as,
    utf8_suspect,
)
from .._controls import SPACED

if TYPE_CHECKING:
    from ...network import Network

__all__ = [
    "Message",
    "RawMessage",
    "parse_message",
    "peek_control_id",
    "split_messages",
    "undeclared_msh_fields",
]

_BOM = b"\xef\xbb\xbf"
_SEGMENT_NAME = re.compile(r"[A-Z][A-Z0-9]{2}\Z")
_BATCH_SEGMENTS = (b"FHS", b"BHS", b"BTS", b"FTS")
_BATCH_HEADS = frozenset(_BATCH_SEGMENTS)
# Line starts after which a payload starting with MSH may hold more than that one
# message's segments (_split_frame): batch envelope segments and a BOM before a segment.
_NOT_ALONE = _BATCH_HEADS | {_BOM}
_LINE_END = re.compile(rb"\r\n|\r|\n")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
# Control bytes other than CR, LF, TAB and the MLLP frame bytes: their presence means
# the input is not an HL7 text message (a PDF, an image, a zip...).
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x1a\x1d-\x1f\x7f]")
_HL7_START = (b"MSH", b"FHS", b"BHS")
_MSH_FIELDS = 25  # MSH-25, the last field HL7 v2.7 to v2.9 define for MSH
# Segments that follow MSH in the messages the gateway reads (and the usual others): one
# of them inside a one-line message means its segment separators were lost.
_NEXT_SEGMENTS = (
    "EVN|PID|PD1|PV1|PV2|NK1|RF1|PRD|CTD|ORC|OBR|OBX|NTE|AL1|DG1|PR1|IN1|IN2|GT1|MSA|ERR|"
    "SCH|TQ1|TQ2|SPM|SFT|UAC|ARQ|AIS|AIG|AIL|AIP|RXO|RXE|RXR|FT1|TXA|IPC|ROL|MRG|ZDS"
)
# Well-formed segment names met in nearly every message: a set look-up instead of the
# regular expression (any other name is still checked by it).
_COMMON_SEGMENTS = frozenset(["MSH", *_NEXT_SEGMENTS.split("|")])
# The control bytes _BINARY lets through (VT and FS frame MLLP; FF and ESC turn up in
# text): values holding them lose them with a warning (see Hl7View).
_STRAY_CONTROLS = (b"\x0b", b"\x0c", b"\x1b", b"\x1c")
_CONTROL_BYTES = bytes([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
# UTF-16/UTF-32 text (BOM, or "MSH" with NUL bytes between the letters): refused with
# a charset error rather than reported as binary data.
_UTF16 = re.compile(rb"\A(?:\xff\xfe|\xfe\xff|\x00*M\x00+S\x00+H)")
# Multi-byte codecs whose trail bytes can be HL7 delimiters (see _declared_charset).
_MULTIBYTE = ("utf-8", "gb18030", "big5hkscs")
# A Hong Kong sender's bytes are Big5 before GB 18030 when both decode.
_HK_PREFER = ("utf-8", "big5hkscs", "gb18030")
# A sender default whose short texts may pass as UTF-8 (see _decode_undeclared).
_NATIONAL = frozenset(["gb18030", "big5hkscs"])


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one message's shape (``mappings/hl7v2/limits.yaml``)."""

    segments: int
    fields: int
    repetitions: int  # per field, unless the field is in ``more_repetitions``
    more_repetitions: dict[str, int]  # 'OBX-5' → its own limit
    components: int  # per field repetition
    subcomponents: int  # per component

    def repetitions_of(self, segment: str, n: int) -> int:
        return self.more_repetitions.get(f"{segment}-{n}", self.repetitions)


@lru_cache(maxsize=1)
def limits() -> Limits:
    path = data_dir("mappings") / "hl7v2" / "limits.yaml"
    raw = load_data_file(path)
    try:
        reps = dict(raw["repetitions"])
        out = Limits(
            int(raw["segments"]),
            int(raw["fields"]),
            int(reps.pop("default")),
            {str(k): int(v) for k, v in reps.items()},
            int(raw["components"]),
            int(raw["subcomponents"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(
            "limits",
            f"{path}: expected segments, fields, repetitions "
            f"(default and per-field), components and subcomponents ({exc})",
        ) from None
    return out


@dataclass(slots=True)
class RawMessage:
    """One message's bytes as found in a file, before decoding."""

    index: int  # 1-based position in the file
    line: int  # line number of its first segment
    segments: list[bytes]
    error: IntakeError | None = None  # set when the bytes cannot be a message at all
    controls: bool = True  # may hold control bytes (False: its input had none at all)
    notes: list[Issue] = field(default_factory=list)  # warnings (batch counts)

    @property
    def data(self) -> bytes:
        return b"\r".join(self.segments) + b"\r"

    def label(self, source: str | None = None) -> str:
        where = f"{source}, " if source else ""
        return f"{where}message #{self.index} (line {self.line})"


@dataclass(slots=True)
class Message:
    """A decoded, tokenised message. Fields stay escaped until a leaf is read."""

    segments: list[list[str]]  # segments[i][n] is field n (MSH-1 is the field separator)
    positions: dict[str, list[int]]  # segment name → indexes into ``segments``
    separators: str  # field, component, repetition, escape, subcomponent
    charset: str  # the codec actually used
    declared_charset: str | None
    notes: list[Issue] = field(default_factory=list)  # how the text was decoded (warnings)
    lines: list[str] = field(default_factory=list)  # each segment's text, as decoded
    controls: bool = False  # a value may hold a control character (a byte or \Xhh\)
    # a value may hold white space that str.strip() takes and SPACE is not: a TAB, an
    # ideographic space, an escape read as LF (\.br\). Such a space at an end of an
    # identifying value fails the record (Hl7View); True unless parse_message looked.
    spaces: bool = True

    @property
    def warnings(self) -> list[str]:
        """The notes' texts."""
        return [note.message for note in self.notes]

    @property
    def control_id(self) -> str:
        return self.msh(10)

    @property
    def message_type(self) -> str:
        """``REF^I12`` from MSH-9 (message code ^ trigger event), escape-free."""
        parts = self.msh(9).split(self.separators[1], 2)
        code, event = parts[0], parts[1] if len(parts) > 1 else ""
        return f"{code}^{event}" if code and event else code or event  # the non-empty ones

    def msh(self, n: int) -> str:
        seg = self.segments[0]
        return seg[n] if n < len(seg) else ""


def _line_ends(data: bytes) -> int:
    return len(_LINE_END.findall(data))


# How an MLLP-framed input starts, after leading whitespace (see _frames).
_FRAME_STARTS = (b"\x0b", _BOM + b"\x0b")


def _frames(data: bytes) -> Iterator[tuple[bytes, int, IntakeError | None]]:
    """Yield (payload, first line number, error) for MLLP frames, or the whole input once.

    Line numbers count CR, LF and CRLF as line ends, as ``_split_frame`` does. An
    unclosed frame yields an error and the following frames are still read; bytes
    after a frame's end block other than whitespace are yielded as a payload of their
    own (an unframed message, or text that ``_split_frame`` reports), never dropped.
    """
    stripped = data.lstrip(b" \t\r\n")
    if stripped.startswith(_BOM + b"\x0b"):  # a BOM written before the first frame
        stripped = stripped[len(_BOM) :]
    if not stripped.startswith(b"\x0b"):
        yield data, 1, None
        return
    line = 1 + _line_ends(data[: len(data) - len(stripped)])
    for chunk in stripped.split(b"\x0b")[1:]:
        end = chunk.find(b"\x1c")
        if end < 0:
            yield (
                b"",
                line,
                IntakeError(
                    "mllp-truncated",
                    "MLLP frame is not closed (no end block 0x1C): the message was truncated",
                    location=f"line {line}",
                ),
            )
        else:
            yield chunk[:end], line, None
            rest = chunk[end + 1 :]
            if rest.strip():
                yield rest, line + _line_ends(chunk[: end + 1]), None
        line += _line_ends(chunk)


def split_messages(data: bytes) -> list[RawMessage]:
    """Split a file (plain, batch or MLLP-framed) into messages; never raises for content.

    A part that cannot be a message (binary data, no MSH) is returned with ``error``
    set, so one bad record does not stop the batch.
    """
    # A Ctrl-Z at the very end is a DOS end-of-file mark, not content.
    data = data.rstrip(b"\x1a")
    if _UTF16.match(data):
        err = IntakeError(
            "charset-unsupported",
            "the input is UTF-16 or UTF-32 text: ER7 framing needs single-byte segment "
            "ends; send UTF-8",
            location="MSH-18",
        )
        return [RawMessage(1, 1, [], err)]
    # One translate finds out whether there is any control byte at all, several times
    # faster than the regular expression that then says where.
    clean = len(data.translate(None, _CONTROL_BYTES)) == len(data)
    binary = None if clean else _BINARY.search(data)
    if binary and not data.lstrip(b"\xef\xbb\xbf \t\r\n\x0b").startswith(_HL7_START):
        return [RawMessage(1, 1, [], _binary_error(binary.start()))]
    messages: list[RawMessage] = []
    if not data.lstrip(b" \t\r\n").startswith(_FRAME_STARTS):
        _split_frame(data, 1, messages)  # what _frames gives unframed input: data, line 1
    else:
        for payload, first_line, error in _frames(data):
            if error is not None:
                messages.append(RawMessage(len(messages) + 1, first_line, [], error))
            else:
                _split_frame(payload, first_line, messages)
    if binary:  # HL7 text with control bytes somewhere: only the messages holding them fail
        for message in messages:
            hit = _BINARY.search(message.data) if message.error is None else None
            if hit:
                message.error = _control_byte_error(message.data, hit.start())
    if clean:
        for message in messages:
            message.controls = False
    if not messages:
        err = IntakeError("empty", "no HL7 v2 message found: the input is empty")
        messages.append(RawMessage(1, 1, [], err))
    return messages


def _binary_error(offset: int) -> IntakeError:
    return IntakeError(
        "binary",
        f"binary data (control byte at offset {offset}): not an HL7 v2 text message",
    )


def _control_byte_error(data: bytes, offset: int) -> IntakeError:
    """A control byte inside an HL7 message, named by the field that holds it."""
    start = data.rfind(b"\r", 0, offset) + 1
    line = data[start:offset]
    fs = data[3:4]
    n = line.count(fs) + (1 if line.startswith(b"MSH") else 0)
    name = line[:3].decode("ascii", "replace")
    where = f"{name}-{n}" if n and _SEGMENT_NAME.match(name) else f"offset {offset}"
    return IntakeError(
        "binary",
        f"a control byte (at offset {offset} of the message) is not text: an HL7 v2 field "
        "cannot hold it; the sender should escape it or leave it out",
        location=where,
        offset=offset,
    )


def _lines(payload: bytes) -> list[bytes]:
    """``_LINE_END.split(payload)``: with one kind of line end only (CR, as nearly every
    sender writes), the bytes' own split gives the same lines several times faster."""
    if b"\n" not in payload:
        return payload.split(b"\r")
    if b"\r" not in payload:
        return payload.split(b"\n")
    return _LINE_END.split(payload)


class _Envelope:
    """The messages of the open batch (BHS..BTS) and file (FHS..FTS), and the batches
    of the file: BTS-1 and FTS-1 are checked against them. Only what one call of
    ``_split_frame`` saw: a trailer whose header it did not see is not checked."""

    def __init__(self) -> None:
        self.batch: list[RawMessage] | None = None
        self.file: list[RawMessage] | None = None
        self.batches = 0

    def segment(self, line: bytes) -> None:
        head = line[:3]
        if head == b"FHS":
            self.file, self.batches = [], 0
        elif head == b"BHS":
            self.batch = []
            self.batches += 1
        elif head == b"BTS" and self.batch is not None:
            _check_count(line, "BTS-1", "messages", len(self.batch), self.batch)
            self.batch = None
        elif head == b"FTS" and self.file is not None:
            _check_count(line, "FTS-1", "batches", self.batches, self.file)
            self.file = None

    def message(self, raw: RawMessage) -> None:
        for held in (self.batch, self.file):
            if held is not None:
                held.append(raw)


def _check_count(line: bytes, field_name: str, what: str, found: int, on: list[RawMessage]) -> None:
    """A warning on each record of the batch (file) when its trailer's count differs
    from what it holds: the messages themselves are fine, so none is refused."""
    fields = line.split(line[3:4]) if len(line) > 3 else []
    declared = fields[1].strip() if len(fields) > 1 else b""
    if not declared.isdigit() or int(declared) == found:
        return  # an empty (optional) count says nothing
    holder = "batch" if what == "messages" else "file"
    note = Issue(
        "intake.batch-count",
        f"{field_name} declares {int(declared)} {what}; the {holder} holds {found}: "
        "a message may have been lost or added in transit",
        location=field_name,
        severity="warning",
    )
    for raw in on:
        raw.notes.append(note)


def _split_frame(payload: bytes, first_line: int, out: list[RawMessage]) -> None:
    lines = _lines(payload)
    if lines[0][:3] == b"MSH":
        heads = [line[:3] for line in lines]
        if heads.count(b"MSH") == 1 and _NOT_ALONE.isdisjoint(heads):
            # One message and nothing else (most inputs: a message posted, kept or
            # framed alone): what the loop below makes of it, without its per-line tests.
            segments = [line for line in lines if line and not line.isspace()]
            out.append(RawMessage(len(out) + 1, first_line, segments))
            return
    current: RawMessage | None = None
    orphan: RawMessage | None = None
    envelope = _Envelope()
    bom = _BOM in payload  # one search of the payload instead of one test per line
    for offset, line in enumerate(lines):
        if bom and line.startswith(_BOM):
            line = line[len(_BOM) :]
        if not line or line.isspace():  # as `not line.strip()`, without a copy
            continue  # blank lines between segments are common in hand-edited files
        head = line[:3]
        if head in _BATCH_HEADS:
            # Batch envelope: the messages inside are what counts. It also ends the
            # message before it: a segment between BTS and the next MSH belongs to no
            # message (an orphan error), never to the last message of the batch.
            current = orphan = None
            envelope.segment(line)
            continue
        lineno = first_line + offset
        if head == b"MSH":
            current = RawMessage(len(out) + 1, lineno, [line])
            out.append(current)
            envelope.message(current)
            orphan = None
        elif current is not None:
            current.segments.append(line)
        elif orphan is None:
            start = shape(line.decode("utf-8", "replace"), 20)  # its form: no patient data
            orphan = RawMessage(
                len(out) + 1,
                lineno,
                [line],
                IntakeError(
                    "no-msh",
                    f"no MSH segment: the record starts with {start}; "
                    "an HL7 v2 message must begin with MSH",
                    location="MSH",
                ),
            )
            out.append(orphan)


def peek_control_id(raw: RawMessage) -> str | None:
    """MSH-10 read from the raw bytes, to name a message whose decoding failed (or that
    holds a control byte elsewhere). Control ids are printable ASCII in practice;
    anything else gives None and the message keeps its position as its name."""
    if not raw.segments or len(raw.segments[0]) < 8 or not raw.segments[0].startswith(b"MSH"):
        return None
    msh = raw.segments[0]
    parts = msh.split(msh[3:4])
    if len(parts) < 10 or not parts[9].isascii():
        return None
    value = parts[9].decode("ascii").strip()
    return value if value and value.isprintable() else None


def _declared_charset(msh: bytes) -> str | None:
    """MSH-18 read from raw bytes (first repetition); ASCII in every supported charset.

    MSH-3..MSH-17 may hold Big5 or GB18030 characters whose trail byte is the field
    separator (院 is B0 7C in Big5, 東 96 7C in GB18030), so counting separators on the
    bytes can land on the wrong field. The fields are therefore first counted on the
    MSH decoded with each multi-byte codec; a codec wins when its reading of MSH-18
    names that same codec. Otherwise the bytes are split as they are.
    """
    if len(msh) < 8:
        return None
    if not msh.isascii():
        for codec in _MULTIBYTE:
            try:
                text = msh.decode(codec)
            except UnicodeDecodeError:
                continue
            name = _msh18(text)
            if name and _codec_or_none(name) == codec:
                return name
    fs = msh[3:4]
    parts = msh.split(fs)
    if len(parts) < 18:
        return None
    rep = parts[1][1:2] or b"~"
    value = parts[17].split(rep)[0].strip()
    return value.decode("ascii", "replace") or None


def _msh18(msh: str) -> str | None:
    parts = msh.split(msh[3])
    if len(parts) < 18:
        return None
    rep = parts[1][1:2] or "~"
    return parts[17].split(rep)[0].strip() or None


def _codec_or_none(name: str) -> str | None:
    try:
        return codec_for(name, location="MSH-18")
    except IntakeError:
        return None


def parse_message(
    raw: RawMessage,
    fallback_charset: Callable[[str], str | None] | None = None,
    network: Network | None = None,
    *,
    data: bytes | None = None,
) -> Message:
    """Decode and tokenise one message.

    ``fallback_charset(sending_facility)`` names the charset to try when MSH-18 is empty
    and the bytes are not UTF-8 (a sender's configured default; ``network.charset`` when
    only ``network`` is given). ``network`` also says, per sender, what to do when a
    single-byte charset meets Chinese multi-byte text (``charset_mismatch``; refused
    without it) and which of GB 18030 and Big5 to try first. ``data``: ``raw.data``,
    when the caller already joined it.
    """
    if raw.error is not None:
        raise raw.error
    bounds = limits()
    if len(raw.segments) > bounds.segments:
        raise IntakeError(
            "too-many-segments",
            f"the message has {len(raw.segments)} segments; the limit is {bounds.segments} "
            "(mappings/hl7v2/limits.yaml)",
            location=f"segment {bounds.segments + 1}",
        )
    msh = raw.segments[0]
    _check_msh(msh)
    if len(raw.segments) == 1:
        _check_separators(msh)
    if fallback_charset is None and network is not None:
        fallback_charset = network.charset
    declared = _declared_charset(msh)
    if data is None:
        data = raw.data
    if declared:
        decoded = _decode(data, declared, msh, network, "MSH-18")
    else:
        decoded = _decode_undeclared(data, msh, fallback_charset, network)
    text = decoded.text
    fs = text[3]
    end = text.find("\r")  # the MSH segment's end (the text always ends with CR)
    cut = text.find(fs, 4, end)  # MSH-2 ends at the next separator, else with MSH
    enc = text[4 : cut if cut >= 0 else end]
    separators = fs + (enc + "^~\\&"[len(enc) :])[:4]
    if enc != "^~\\&" or fs != "|":  # what nearly every sender writes: nothing to check
        _check_encoding_characters(fs, enc, separators)
    segments, positions, lines, too_many = _tokenise(text, fs, bounds.fields + 1)
    message = Message(segments, positions, separators, decoded.codec, declared, lines=lines)
    if too_many:
        raise _too_many_fields(message, too_many, bounds)
    _check_bounds(message, data, bounds)
    message.controls = _hex_escape(separators[3]) in data or (
        raw.controls and any(b in data for b in _STRAY_CONTROLS)
    )
    message.spaces = _may_hold_spaces(
        data, text, decoded.codec, separators[3], cut if cut >= 0 else end
    )
    if decoded.note:
        message.notes.append(Issue(decoded.code, decoded.note, "", "MSH-18", "warning"))
    _check_header_fields(segments[0])
    return message


def _may_hold_spaces(data: bytes, text: str, codec: str, es: str, start: int) -> bool:
    """Whether a value of the message may hold white space that str.strip() takes and
    SPACE is not (_controls.EDGE_SPACES: a TAB, a no-break or an ideographic space) or an
    LF (a formatting escape, ``\\.br\\``; a raw LF ends a segment). Cheaper than a look
    at each value read: memchr for a TAB and the escape character after MSH-2 (``start``:
    the header before it is ASCII); the other spaces are not ASCII, so only a message
    that is not is searched for them (one pass over its text: the bytes of twenty
    characters in GB 18030 or UTF-8 took five times as long)."""
    if b"\t" in data or (not data.isascii() and SPACED.search(text) is not None):
        return True
    escape = _formatting_escape(codec, es)
    at = data.find(escape[:-1], start)  # most messages hold no escape after MSH-2
    return at >= 0 and data.find(escape, at) >= 0


@lru_cache(maxsize=32)
def _formatting_escape(codec: str, es: str) -> bytes:
    """The bytes of a formatting escape's start (``\\.``: .br and .sp read as LF) in
    ``codec``. Every charset the gateway reads (mappings/charsets/hl7v2.yaml) is stateless
    and keeps ASCII as ASCII, so these bytes are in the message whenever it holds one."""
    return (es + ".").encode(codec)


@lru_cache(maxsize=32)
def _hex_escape(es: str) -> bytes:
    """The bytes opening a hex escape (``\\X``) with escape character ``es``."""
    return es.encode() + b"X"


def _tokenise(
    text: str, fs: str, most_fields: int
) -> tuple[list[list[str]], dict[str, list[int]], list[str], list[str] | None]:
    """Segments (fields split), where each segment name occurs, each segment's text, and
    the first segment over ``most_fields`` (its name, then its fields). Every segment's
    first part split on ``fs`` is its name exactly when the line is well formed (a name
    is letters and digits, ``fs`` never is), so one set look-up per segment checks it;
    a line that fails goes to :func:`_segment_syntax`, which names it."""
    lines = text.split("\r")
    if lines[-1] == "":
        lines.pop()  # the text ends with CR
    if "" in lines:
        lines = [line for line in lines if line]
    segments = [line.split(fs) for line in lines]
    names = [fields[0] for fields in segments]
    if not _COMMON_SEGMENTS.issuperset(names) and not all(map(_SEGMENT_NAME.match, names)):
        raise _segment_syntax(text, fs)
    if names.count("MSH") == 1 and names[0] == "MSH":
        segments[0].insert(1, fs)  # MSH-1 *is* the separator; MSH-2 the encoding characters
    else:
        for fields in segments:
            if fields[0] == "MSH":
                fields.insert(1, fs)
    positions: dict[str, list[int]] = {}
    for n, name in enumerate(names):
        found = positions.get(name)
        if found is None:
            positions[name] = [n]
        else:
            found.append(n)
    too_many: list[str] | None = None
    if max(map(len, segments), default=0) > most_fields:
        too_many = next(fields for fields in segments if len(fields) > most_fields)
    return segments, positions, lines, too_many


def _segment_syntax(text: str, fs: str) -> IntakeError:
    """The error for the first malformed segment of ``text`` (numbered among all its
    lines, empty ones included)."""
    for n, line in enumerate(text.split("\r")):
        name = line[:3]
        if line and (not _SEGMENT_NAME.match(name) or (len(line) > 3 and line[3] != fs)):
            return IntakeError(
                "segment-syntax",
                f"segment {n + 1} starts with {shape(line, 12)}: expected a 3-character "
                f"segment name followed by {fs!r}",
                location=f"segment {n + 1}",
            )
    raise AssertionError("_segment_syntax: no malformed segment")  # only called on one


def _check_separators(line: bytes) -> None:
    """A message that is one line holding another segment (``…|UNICODE UTF-8PID|1|…``)
    lost its carriage returns on the way (``curl -d`` strips them): say so, rather than
    report the MSH-18 that now runs into the next segment as an unknown charset. The
    next segment starts inside MSH's last field, never before MSH-12 (the version id,
    required); earlier fields name applications and facilities (NSCH ends in SCH).

    Past MSH-25, the last field HL7 defines for MSH, a segment name is no longer where
    MSH ends: the segment that follows MSH is one this check does not know (a Z-segment)
    and the name found is a value's tail in a later segment (PRD-8 NSCH), so no segment
    or field is named."""
    sep = line[3:4]
    pattern = rb"(?:" + _NEXT_SEGMENTS.encode() + rb")" + re.escape(sep)
    for glued in re.finditer(pattern, line):
        field = _field_before(line, glued.start())  # MSH-n holding the match
        if field < 12:
            continue
        where = (
            f"segment {glued.group()[:3].decode()} running on inside MSH-{field}"
            if field <= _MSH_FIELDS
            else f"its segments running on past MSH-{_MSH_FIELDS}, the last field of MSH"
        )
        raise IntakeError(
            "no-segment-separators",
            f"no segment separators (carriage returns): the message is one line, {where}; "
            "the line ends were lost in transit: send the bytes as they are "
            "(curl --data-binary @file, not -d, which strips them)",
            location="MSH",
        )


def _field_before(line: bytes, end: int) -> int:
    """n of the MSH-n that ``line[end]`` is in, counted before the line is decoded (its
    MSH-18 may run into the next segment). A Big5 or GB 18030 trail byte may be '|' (院
    in Big5 is B0 7C, so a sending application 瑪麗醫院 made MSH-18 look like MSH-19):
    when the text before the next segment's name, the MSH-18 it ran into, declares
    one of those two, the fields are counted in it; when it declares another charset
    (8859/1: É before '|' is C9 7C, a GB 18030 character), on the bytes, whatever the
    text looks like (a Portuguese name guessed as Chinese named MSH-17). Else counted
    in the text the bytes look like (:func:`_msh_fields`), or on the bytes when they
    cannot be read so."""
    head = line[:end]
    sep = line[3:4]
    if head.isascii():
        return head.count(sep) + 1
    named = _named_codec(head, sep, line[5:6] or b"~")
    codec = named if named is not None else mislabelled_as(line)
    if named is None or named in ("gb18030", "big5hkscs"):
        fields = _msh_fields(head, codec)
        if fields is not None:
            return len(fields) - 1
    return head.count(sep) + 1


def _named_codec(head: bytes, sep: bytes, rep: bytes) -> str | None:
    """The codec that the tail of ``head`` (the field the next segment ran into, as the
    bytes split it: a charset name is ASCII) declares, when it is MSH-18; None when it
    names no known charset."""
    name = head.rsplit(sep, 1)[-1].split(rep, 1)[0].strip()
    if not name or not name.isascii():
        return None
    return _codec_or_none(name.decode("ascii"))


def _check_msh(msh: bytes) -> None:
    sep = msh[3:4]
    if len(msh) < 8 or not sep.isascii() or sep.isalnum() or not sep.strip() or sep < b"!":
        raise IntakeError(
            "msh-syntax",
            "MSH is truncated or malformed: expected 'MSH' then a field separator and the "
            "encoding characters (e.g. MSH|^~\\&|...)",
            location="MSH-1",
        )


def _check_encoding_characters(fs: str, enc: str, separators: str) -> None:
    """MSH-2: component, repetition, escape and subcomponent separators (and, from v2.7,
    the truncation character), each a distinct punctuation mark. ``^^^^`` would make
    every '^' mean four things at once and split a name where no sender meant it."""
    used = separators + enc[4:]
    problem = None
    if len(enc) > 5:
        problem = f"it has {len(enc)} characters; at most 5 are defined"
    elif any(not ch.isascii() or ch.isalnum() or not ch.strip() or ch < "!" for ch in enc):
        problem = "a letter, digit, space or non-ASCII character cannot be a delimiter"
    elif len(set(used)) != len(used):
        problem = "the delimiters are not distinct from each other and from MSH-1"
    if problem:
        raise IntakeError(
            "msh-encoding-characters",
            f"the encoding characters, of form {shape(enc, 8)}, are malformed: {problem} "
            "(expected e.g. ^~\\&)",
            location="MSH-2",
        )


def _check_bounds(message: Message, data: bytes, bounds: Limits) -> None:
    """The limits of ``mappings/hl7v2/limits.yaml``. Counting each delimiter over the
    message's bytes settles almost every message at C speed: the delimiters are ASCII,
    one byte each in every supported charset, so the bytes hold at least as many as the
    text (a Big5 trail byte may add some, never hide one), and n delimiters make at most
    n + 1 parts. Only a message where some count reaches a limit is looked at field by
    field, on the text."""
    cs, rs, ss = message.separators[1], message.separators[2], message.separators[4]
    size = len(data)  # fewer bytes than a limit: that count cannot reach it (no scan)
    if (
        (size < bounds.repetitions or data.count(rs.encode()) < bounds.repetitions)
        and (size < bounds.components or data.count(cs.encode()) < bounds.components)
        and (size < bounds.subcomponents or data.count(ss.encode()) < bounds.subcomponents)
    ):
        return
    for fields, line in zip(message.segments, message.lines, strict=True):
        if (
            line.count(rs) < bounds.repetitions
            and line.count(cs) < bounds.components
            and line.count(ss) < bounds.subcomponents
        ):
            continue
        first = 3 if fields[0] == "MSH" else 1  # MSH-1/2 are the delimiters themselves
        for n in range(first, len(fields)):
            problem = _field_problem(fields[n], message.separators, bounds, fields[0], n)
            if problem:
                what, count, limit, where = problem
                label = f"{_segment_label(message, fields)}-{n}{where}"
                raise IntakeError(
                    f"too-many-{what}",
                    f"{count} {what}, more than the limit of {limit} (mappings/hl7v2/limits.yaml)",
                    location=label,
                )


def _too_many_fields(message: Message, fields: list[str], bounds: Limits) -> IntakeError:
    label = _segment_label(message, fields)
    return IntakeError(
        "too-many-fields",
        f"{len(fields) - 1} fields, more than the limit of {bounds.fields} "
        "(mappings/hl7v2/limits.yaml)",
        location=label,
    )


def _field_problem(
    value: str, separators: str, bounds: Limits, segment: str, n: int
) -> tuple[str, int, int, str] | None:
    """(what, how many, limit, where inside the field) for the first bound passed."""
    cs, rs, ss = separators[1], separators[2], separators[4]
    reps = value.split(rs)
    limit = bounds.repetitions_of(segment, n)
    if len(reps) > limit:
        return "repetitions", len(reps), limit, ""
    for r, rep in enumerate(reps, 1):
        at = f"({r})" if r > 1 else ""
        components = rep.split(cs)
        if len(components) > bounds.components:
            return "components", len(components), bounds.components, at
        for c, comp in enumerate(components, 1):
            count = comp.count(ss) + 1
            if count > bounds.subcomponents:
                return "subcomponents", count, bounds.subcomponents, f"{at}.{c}"
    return None


def _segment_label(message: Message, fields: list[str]) -> str:
    found = message.positions[fields[0]]
    if len(found) == 1:
        return fields[0]
    index = next(i for i in found if message.segments[i] is fields)
    return f"{fields[0]}({found.index(index) + 1})"


def _check_header_fields(msh: list[str]) -> None:
    """MSH-9 and MSH-12 present (``msh[n]`` is MSH-n)."""
    if len(msh) <= 9 or not msh[9]:
        raise IntakeError(
            "msh-truncated",
            f"MSH has {len(msh) - 1} fields: the message type (MSH-9) is missing",
            location="MSH-9",
        )
    if len(msh) <= 12 or not msh[12]:
        raise IntakeError(
            "msh-truncated",
            "MSH-12 (version id) is empty: the MSH segment is truncated",
            location="MSH-12",
        )


def _sender_policy(
    msh: bytes, network: Network | None, codec: str | None
) -> tuple[str, tuple[str, ...]]:
    """The sender's ``charset_mismatch`` and the multi-byte charsets to try, in order.
    ``codec``: the charset the message declares (or defaults to), in which MSH-4 is read;
    a single-byte one over Chinese bytes (the very case this policy decides) is read in
    the charset the MSH's bytes are, as DICOM reads InstitutionName."""
    if network is None:
        return "refuse", MULTI_BYTE
    if codec not in _MULTIBYTE and not msh.isascii():
        codec = mislabelled_as(msh, declared=codec) or codec
    facility = _facility(msh, codec)
    inst = network.institution(facility)
    hk = inst is not None and (inst.jurisdiction or "").upper().startswith("HK")
    return network.charset_mismatch(facility), _HK_PREFER if hk else MULTI_BYTE


def _decode(
    data: bytes,
    name: str,
    msh: bytes,
    network: Network | None,
    location: str,
    claim: str | None = None,
) -> Decoded:
    codec = codec_for(name, location=location)
    if data.isascii() or codec == "utf-8":  # UTF-8's byte grammar checks itself
        return decode_strict(data, codec, declared=name, location=location)
    # A single-byte charset over Chinese bytes, or GB 18030 and Big5 mistaken for each
    # other: the sender's charset_mismatch decides.
    mismatch, prefer = _sender_policy(msh, network, codec)
    return decode_strict(
        data,
        codec,
        declared=name,
        location=location,
        mismatch=mismatch,
        prefer=prefer,
        place=_first_non_ascii,
        claim=claim,
    )


def _first_non_ascii(text: str) -> str | None:
    """The terser path of the field where ``text`` first leaves ASCII (``PID-5``): where
    a mislabelled charset shows. Only the form of the message is used, no content."""
    found = _NON_ASCII.search(text)
    if found is None:
        return None
    offset = found.start()
    start = text.rfind("\r", 0, offset) + 1
    line = text[start:offset]
    name = line[:3]
    if not _SEGMENT_NAME.match(name) or len(text) < 4:
        return None
    n = line.count(text[3]) + (1 if name == "MSH" else 0)
    return f"{name}-{n}" if n else None


def _decode_undeclared(
    data: bytes,
    msh: bytes,
    fallback_charset: Callable[[str], str | None] | None,
    network: Network | None,
) -> Decoded:
    # Decoded here, not by decode_strict: its error would name the charset the bytes
    # read as (two decodings and a scan, ~12 % of a short message's conversion), and
    # a sender's default charset is tried next anyway
    try:
        utf8: Decoded | None = Decoded(data.decode("utf-8"), "utf-8")
    except UnicodeDecodeError:
        utf8 = None
    if utf8 is not None and not utf8_suspect(utf8.text):
        return utf8
    # MSH-4 in the charset the MSH's bytes are: which default the sender has is not known yet
    guess = "utf-8" if utf8 is not None else mislabelled_as(msh)
    facility = _facility(msh, guess)
    name = fallback_charset(facility) if (fallback_charset and facility) else None
    if utf8 is not None and not _default_reads_better(data, name):
        return utf8
    if not name:
        likely = mislabelled_as(data, _sender_policy(msh, network, guess)[1])
        fields = _msh_fields(msh, likely)
        if fields is not None:  # a truncated MSH is what is wrong first
            _check_header_fields(fields)
            facility = _component(fields, 4)
        hint = f" (they look like {charset_name(likely)} text)" if likely else ""
        raise IntakeError(
            "charset-undeclared",
            f"MSH-18 is empty and the bytes are not valid UTF-8{hint}; declare the "
            "character set in MSH-18 or configure a default charset for sender "
            f"{facility if facility.isprintable() and facility else '?'}",
            location="MSH-18",
        )
    claim = f"MSH-18 is empty and the sender's configured charset is {name!r}"
    decoded = _decode(data, name, msh, network, "MSH-18 (sender default)", claim)
    if decoded.note:  # decoded as what the bytes are, not as the sender's default
        return decoded
    note = f"MSH-18 is empty; decoded with {name}, the configured charset of {facility}"
    return Decoded(decoded.text, decoded.codec, note, "intake.charset-default")


def _default_reads_better(data: bytes, name: str | None) -> bool:
    """Whether valid UTF-8 bytes that read as no word (:func:`utf8_suspect`) are the
    sender's GB 18030 or Big5 default: short Chinese text often passes as UTF-8 (GB
    18030 志强 is a Hebrew maqaf and a Latin ǿ); the default wins when it reads as
    Chinese."""
    codec = _codec_or_none(name) if name else None
    return codec in _NATIONAL and reads_as(data, codec or "") is not None


def _msh_fields(msh: bytes, codec: str | None) -> list[str] | None:
    """The MSH's fields (``[n]`` is MSH-n) read in ``codec``, the charset its bytes look
    like; None when they cannot be counted: split as bytes, a GB 18030 or Big5 trail
    byte that is '|' (育 A8 7C in Big5, 東 96 7C in GB 18030) would shift the fields."""
    if msh.isascii():
        text = msh.decode("ascii")
    else:
        try:
            text = msh.decode(codec or "")
        except (UnicodeDecodeError, LookupError):
            return None
    fields = text.split(text[3])
    fields.insert(1, text[3])
    return fields


def undeclared_msh_fields(data: bytes) -> list[str] | None:
    """The MSH fields (``[n]`` is MSH-n) of a message starting with its MSH and declaring
    no MSH-18, read in the charset its bytes look like; None when that cannot be told.
    For an error ACK: split as bytes, a '|' trail byte would shift MSH-10."""
    msh = _LINE_END.split(data, 1)[0]
    if len(msh) < 8 or not msh.startswith(b"MSH"):
        return None
    fields = _msh_fields(msh, mislabelled_as(data))
    return fields if fields is not None and not _component(fields, 18) else None


def _component(fields: list[str], n: int) -> str:
    """The first component of MSH-n."""
    value = fields[n] if n < len(fields) else ""
    return value.split(fields[2][:1] or "^")[0].strip()


def _facility(msh: bytes, codec: str | None) -> str:
    """MSH-4.1, the sender's facility code (its charset policy and default charset are
    looked up by it), read in ``codec``; "" when the MSH does not decode in it. Decoded
    as ASCII with replacement, a Chinese code was U+FFFD, and two codes one string; split
    as bytes, a Big5 or GB 18030 trail byte '|' (院 B0 7C in Big5) shifted the fields."""
    if msh.isascii():
        fs = msh[3:4]
        parts = msh.split(fs)
        if len(parts) < 4:
            return ""
        comp = parts[1][:1] or b"^"
        return parts[3].split(comp)[0].decode("ascii").strip()
    fields = _msh_fields(msh, codec)
    return _component(fields, 4) if fields is not None else ""
