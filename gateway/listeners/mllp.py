"""The MLLP listener: HL7 v2 over TCP (optionally TLS), one ACK per message.

Framing is the standard one (0x0B message 0x1C 0x0D). A message is answered ``AA`` only
once its row is committed to the store; conversion runs afterwards (an ACK means
"stored", not "converted"). ``AE``/``AR`` carry an ERR segment with the HL7 error code
(table 0357) and the field: AE for a message whose content is wrong, AR for one that
cannot be read as one HL7 v2 message with an MSH-10 (a frame holding several is refused
whole) and for a store that cannot commit (a failure unrelated to the message: HL7 v2.5
2.9.2.2, docs/store.md). The ACK is written in the message's own version, separators
and character set (MSH-18 echoed), with MSH-10 in MSA-2. In enhanced mode (MSH-15 or
MSH-16 valued) the accept acknowledgement is ``CA``/``CE``/``CR``, sent as MSH-15 asks
(AL, NE, ER, SU); application acknowledgements are not sent (the gateway has no route
back to the sender): the message's outcome is in the store.

With client certificates (``mllp_tls_ca``) a connection is an institution's: its
certificate names one (organizationIdentifier ``OID:<oid>``, as ``gateway keys init``
issues them), and a message whose MSH-4 names another institution, is empty or names
none the network knows is refused (AR): its MRNs would be filed in identifier systems
not the sender's (docs/store.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..audit import audit_log, store_hook
from ..config import Settings
from ..errors import GatewayError, IntakeError, Issue
from ..intake import codec_for
from ..intake.hl7v2 import (
    Hl7View,
    Message,
    parse_message,
    split_messages,
    undeclared_msh_fields,
)
from ..network import Institution, Network
from ..pipeline import Converter
from ..store import Incoming, Receipt, Store
from .shared import (
    ClientCertificate,
    Processor,
    StoreWriter,
    client_certificate,
    server_tls_context,
)

__all__ = [
    "Ack",
    "ClientCertificate",
    "MllpServer",
    "build_ack",
    "frame",
    "mllp_running",
    "tls_context",
]

log = logging.getLogger("gateway.listeners.mllp")

START, END = b"\x0b", b"\x1c\x0d"
# Intake errors that mean "this is not an HL7 v2 message one can read the header of":
# rejected (AR), as HL7 rejects an unreadable MSH; others are content errors (AE).
_REJECTS = {
    "intake.empty",
    "intake.no-msh",
    "intake.binary",
    "intake.msh-syntax",
    "intake.msh-truncated",
    "intake.mllp-too-large",
    "intake.no-control-id",
    "intake.mllp-several-messages",
    "intake.mllp-sender-mismatch",
    "intake.mllp-client-no-institution",
}
# HL7 table 0357 (message error condition codes) for the gateway's intake errors.
_HL7_ERROR = {
    "intake.msh-truncated": ("101", "Required field missing"),
    "intake.no-control-id": ("101", "Required field missing"),
    "intake.msh-syntax": ("102", "Data type error"),
    "intake.charset-unknown": ("103", "Table value not found"),
    "intake.charset-unsupported": ("103", "Table value not found"),
    "intake.charset-mismatch": ("102", "Data type error"),
    "intake.charset-mislabelled": ("102", "Data type error"),
    "intake.charset-undeclared": ("102", "Data type error"),
    # MSH-4 (table 0362, facility) holds no facility this connection may send as
    "intake.mllp-sender-mismatch": ("103", "Table value not found"),
    "intake.mllp-client-no-institution": ("103", "Table value not found"),
    "store.sender-refused": ("103", "Table value not found"),
}
_SEGMENT_ERROR = ("100", "Segment sequence error")
_DATA_TYPE = ("102", "Data type error")
_INTERNAL = ("207", "Application internal error")
_FIELD = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)")
_control_ids = itertools.count(1)


@dataclass(slots=True)
class _Header:
    """What the ACK needs from the message's MSH (read even when the message is bad)."""

    separators: str = "|^~\\&"
    fields: list[str] = field(default_factory=list)  # fields[n] is MSH-n
    codec: str = "ascii"
    charset: str = ""  # MSH-18 as declared (echoed in the ACK)

    def get(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # AA AE AR (original mode) or CA CE CR (enhanced)
    data: bytes | None  # the ACK message; None when MSH-15 says not to send one


def frame(message: bytes) -> bytes:
    return START + message + END


def _header_of(message: Message) -> _Header:
    return _Header(
        message.separators,
        list(message.segments[0]),
        message.charset,
        message.declared_charset or "",
    )


# The multi-byte charsets whose trail bytes include '|', '^', '~' and '\\': a header in
# them is split right only once decoded.
_MULTI_BYTE = ("gb18030", "big5hkscs", "utf-8")


def _peek_header(payload: bytes) -> _Header:
    """A bad message's MSH, best effort: its separators, fields and declared charset,
    so that even an error ACK names the message and speaks its charset. The line is
    decoded in the charset it declares when it reads as such (a GB 18030 or Big5 trail
    byte may be the field separator: split as bytes, the fields after it shift, and
    MSA-2 would name another control id); otherwise only its ASCII fields are kept."""
    start = payload.lstrip(b"\r\n \t").removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM
    line = start.split(b"\r", 1)[0].split(b"\n", 1)[0]
    if not line.startswith(b"MSH") or len(line) < 8 or line[3:4].isalnum():
        return _Header()
    naive = _split_header(line.decode("latin-1"))
    for codec in dict.fromkeys((naive.codec, *_MULTI_BYTE)):
        try:
            header = _split_header(line.decode(codec))
        except (UnicodeDecodeError, LookupError):
            continue
        if header.codec == codec:  # read in the charset it declares
            return header
    # No charset declared: the fields as split in the charset the bytes look like.
    fields = undeclared_msh_fields(start)
    # Fields with non-ASCII bytes may be cut wrong (trail bytes), and are not in the
    # ACK's charset: left out.
    naive.fields = [f if f.isascii() else "" for f in fields or naive.fields]
    return naive


def _split_header(text: str) -> _Header:
    fs = text[3]
    enc = text[4 : text.find(fs, 4)] if fs in text[4:] else text[4:8]
    fields = text.split(fs)
    fields.insert(1, fs)
    header = _Header(fs + (enc + "^~\\&"[len(enc) :])[:4], fields)
    declared = header.get(18).split(header.separators[2])[0].strip()
    if declared:
        with contextlib.suppress(IntakeError):
            header.codec, header.charset = codec_for(declared, location="MSH-18"), declared
    return header


def _in_a_field(issue: Issue) -> bool:
    """A control byte inside a field after the MSH: a readable HL7 v2 message whose
    content is wrong (AE, 102 at that field), not bytes that are no HL7 v2 (AR)."""
    found = _FIELD.match(issue.location or "")
    return issue.code == "intake.binary" and found is not None and found.group(1) != "MSH"


def _escape(text: str, seps: str) -> str:
    fs, cs, rs, es, ss = seps[0], seps[1], seps[2], seps[3], seps[4]
    out = text.replace(es, f"{es}E{es}")
    for ch, code in ((fs, "F"), (cs, "S"), (rs, "R"), (ss, "T")):
        out = out.replace(ch, f"{es}{code}{es}")
    return out.replace("\r", " ").replace("\n", " ")


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text.split("^")[0])
    return tuple(int(p) for p in parts[:3]) or (2, 5)


def build_ack(
    header: _Header, code: str, issue: Issue | None = None, now: datetime | None = None
) -> bytes:
    """The acknowledgement of a message with this header: MSH, MSA and, for an error,
    ERR (ERR-1 before v2.5; ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 text from
    v2.5), encoded in the message's character set."""
    seps = header.separators
    fs, cs = seps[0], seps[1]
    version = header.get(12)
    trigger = header.get(9).split(cs)[1] if cs in header.get(9) else ""
    kind = "ACK"
    if trigger:
        kind = f"ACK{cs}{trigger}" + (f"{cs}ACK" if _version(version) >= (2, 4) else "")
    stamp = (now or datetime.now().astimezone()).strftime("%Y%m%d%H%M%S%z")
    msh = [
        "MSH",
        seps[1:],
        header.get(5),
        header.get(6),
        header.get(3),
        header.get(4),
        stamp,
        "",
        kind,
        f"GW{stamp[:14]}{next(_control_ids):06d}",
        header.get(11) or "P",
        version or "2.5",
        *[""] * 5,  # MSH-13..17
        header.charset,  # MSH-18
    ]
    while msh and msh[-1] == "":
        msh.pop()
    segments = [fs.join(msh), fs.join(["MSA", code, header.get(10)])]
    if issue is not None:
        segments[1] += fs + _escape(issue.message, seps) if _version(version) < (2, 5) else ""
        segments.append(_err(issue, seps, _version(version)))
    text = "\r".join(segments) + "\r"
    return text.encode(header.codec, "replace")


def _err(issue: Issue, seps: str, version: tuple[int, ...]) -> str:
    fs, cs, ss = seps[0], seps[1], seps[4]
    number, name = _HL7_ERROR.get(issue.code, _SEGMENT_ERROR)
    if issue.code in ("store.unavailable", "intake.mllp-too-large"):
        number, name = _INTERNAL
    if _in_a_field(issue):
        number, name = _DATA_TYPE
    found = _FIELD.match(issue.location or "")
    segment, position = (found.group(1), found.group(2)) if found else ("", "")
    text = _escape(f"{issue.message} [{issue.code}]", seps)
    if version < (2, 5):
        code = ss.join([number, name, "HL70357"])
        where = cs.join([segment, "1" if segment else "", position, code])
        return fs.join(["ERR", where])
    location = cs.join([segment, "1", position]) if segment else ""
    return fs.join(["ERR", "", location, cs.join([number, name, "HL70357"]), "E", "", "", "", text])


@dataclass(slots=True)
class _Read:
    """One frame as read: its payload, or how much was dropped for being too large."""

    payload: bytes
    too_large: int = 0


_CHUNK = 65536  # bytes asked of the socket at a time (StreamReader buffers twice this)


class _FrameTimeout(TimeoutError):
    """A frame not finished within mllp_frame_timeout (slowloris)."""


class _Frames:
    """The frames of one connection, read with two limits: ``idle`` seconds without a
    byte (reset by every read), and ``whole`` seconds from a frame's start block to its
    end block (a frame trickling in a byte at a time never ends). At most ``max_bytes``
    of a frame are held; the rest of a larger one is read and dropped."""

    def __init__(
        self, reader: asyncio.StreamReader, max_bytes: int, idle: float, whole: float
    ) -> None:
        self.reader, self.max_bytes, self.idle, self.whole = reader, max_bytes, idle, whole
        self.buffer = bytearray()  # read, not yet framed
        self.deadline: float | None = None  # the current frame's end (monotonic)

    async def next(self) -> _Read | None:
        """The next frame; None at the end of the stream (a frame cut there is dropped:
        no ACK, the sender resends). Bytes before a start block (line ends some senders
        put between frames) are skipped."""
        self.deadline = None
        while (start := self.buffer.find(START)) < 0:
            self.buffer.clear()
            if not await self._fill():
                return None
        del self.buffer[: start + 1]
        self.deadline = time.monotonic() + self.whole
        scanned = 0
        while (end := self.buffer.find(END, scanned)) < 0:
            if len(self.buffer) > self.max_bytes + 1:  # END can no longer come in time
                return await self._drop()
            scanned = max(len(self.buffer) - 1, 0)  # 0x1C may be the last byte read
            if not await self._fill():
                return None
        if end > self.max_bytes:
            head = bytes(self.buffer[:_CHUNK])
            del self.buffer[: end + len(END)]
            return _Read(head, end)
        payload = bytes(self.buffer[:end])
        del self.buffer[: end + len(END)]
        return _Read(payload)

    async def _drop(self) -> _Read | None:
        """The rest of a frame over max_bytes, read and dropped; its head is kept for
        the ACK (MSH)."""
        head, dropped = bytes(self.buffer[:_CHUNK]), 0
        while (end := self.buffer.find(END)) < 0:
            dropped += len(self.buffer) - 1
            del self.buffer[:-1]
            if not await self._fill():
                return None
        dropped += end
        del self.buffer[: end + len(END)]
        return _Read(head, dropped)

    async def _fill(self) -> bool:
        """More bytes into the buffer; False at the end of the stream."""
        wait = self.idle
        if self.deadline is not None:
            wait = min(wait, self.deadline - time.monotonic())
            if wait <= 0:
                raise _FrameTimeout
        try:
            chunk = await asyncio.wait_for(self.reader.read(_CHUNK), wait)
        except TimeoutError:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise _FrameTimeout from None
            raise
        self.buffer += chunk
        return bool(chunk)


class MllpServer:
    """An asyncio MLLP server writing to the store through one StoreWriter, converting
    through a Processor (None: store only)."""

    def __init__(
        self,
        settings: Settings,
        writer: StoreWriter,
        processor: Processor | None = None,
        network: Network | None = None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.processor = processor
        self.network = network or Network.load(settings.network)
        self.max_bytes = settings.mllp_max_bytes
        self.idle_timeout = settings.mllp_idle_timeout
        self.frame_timeout = settings.mllp_frame_timeout
        self.max_connections = settings.mllp_max_connections
        self.refused_connections = 0  # closed for being over mllp_max_connections
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False  # set by close: a connection starting after it is cut

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen; returns the port (given 0, the one the system chose)."""
        self._server = await asyncio.start_server(
            self._connection,
            host or self.settings.mllp_host,
            self.settings.mllp_port if port is None else port,
            ssl=tls_context(self.settings),
            limit=_CHUNK,  # StreamReader holds up to twice this; _Frames holds a frame
            backlog=512,
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop listening and cut every connection, each hanging up (aborting a peer
        that does not read) before the store closes. A connection accepted just before
        has a task that has not run yet, unknown here: it finds ``_closing`` set when
        it starts and hangs up unread (it would otherwise store and acknowledge after
        the stop, or wait for a writer already closed)."""
        self._closing = True
        if self._server is not None:
            self._server.close()
            tasks = list(self._connections)  # complete: none is added once _closing is set
            pending = set(tasks)
            while pending:
                # again until each ends: Python 3.11's wait_for drops a cancellation that
                # comes as what it waits on completes (gh-86296), and the connection
                # would read on, up to mllp_idle_timeout, the stop waiting for it
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.05)
            await asyncio.gather(*tasks, return_exceptions=True)  # their errors taken
            await self._server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:  # accepted just before close: nothing read, nothing answered
            writer.transport.abort()
            return
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        if len(self._connections) >= self.max_connections:
            # Each connection may hold a frame of up to mllp_max_bytes: past the cap, a
            # flood of connections would take the memory; refused before reading a byte.
            self.refused_connections += 1
            log.warning(
                "MLLP connection from %s closed: %d connections open (mllp_max_connections)",
                peer,
                len(self._connections),
            )
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        client = self._client_certificate(writer)
        frames = _Frames(reader, self.max_bytes, self.idle_timeout, self.frame_timeout)
        grace = self.idle_timeout  # for the last ACKs to leave when the peer hangs up
        try:
            while (read := await frames.next()) is not None:
                ack = await self.answer(read.payload, peer, client, read.too_large)
                if ack.data is not None:
                    writer.write(frame(ack.data))
                    try:
                        await asyncio.wait_for(writer.drain(), self.idle_timeout)
                    except TimeoutError:  # a peer that does not take its ACKs: cut off
                        grace = 0.0
                        break
        except _FrameTimeout:
            log.warning(
                "MLLP connection from %s closed: a frame not finished within %gs "
                "(mllp_frame_timeout); nothing of it was stored or acknowledged",
                peer,
                self.frame_timeout,
            )
        except (TimeoutError, ConnectionError):
            pass  # idle, or gone (a frame cut mid-way has no ACK: the sender resends)
        except asyncio.CancelledError:
            grace = 0.0  # stopping: no waiting for a peer
        finally:
            if task is not None:
                self._connections.discard(task)
            await _hang_up(writer, grace)

    def _client_certificate(self, writer: asyncio.StreamWriter) -> ClientCertificate | None:
        """The client's certificate when the listener asks for one (``mllp_tls_ca``);
        None on a connection without (plain MLLP, TLS without client certificates)."""
        tls = writer.get_extra_info("ssl_object")
        if tls is None or self.settings.mllp_tls_ca is None:
            return None
        return client_certificate(tls.getpeercert(binary_form=True), self.network)

    async def answer(
        self,
        payload: bytes,
        peer: str | None,
        client: ClientCertificate | None,
        too_large: int = 0,
    ) -> Ack:
        """Store one message and say so: the ACK to send back. ``client``: the
        connection's certificate, when it must present one."""
        auth = client.name if client is not None else None
        message: Message | None = None
        issue: Issue | None = None
        if too_large:
            issue = IntakeError(
                "mllp-too-large",
                f"the message is {too_large} bytes or more; the limit is {self.max_bytes} "
                "(mllp_max_bytes)",
                location="MSH",
            ).issue
        else:
            message, issue = self._parse(payload)
        header = _header_of(message) if message is not None else _peek_header(payload)
        enhanced = bool(header.get(15) or header.get(16))
        if issue is not None:
            code = "R" if issue.code in _REJECTS and not _in_a_field(issue) else "E"
            if not too_large:  # kept, refused, so that the browser shows it
                await self._keep_rejected(payload, peer, auth, header, issue)
            return self._ack(header, code, enhanced, issue)
        assert message is not None
        if client is not None and (refused := self._not_sender(message, client)) is not None:
            log.warning("MLLP message from %s refused: %s", peer, refused.line())
            await self._keep_rejected(payload, peer, auth, header, refused)
            return self._ack(header, "R", enhanced, refused)
        incoming = Incoming(
            payload,
            "mllp",
            "hl7v2",
            peer=peer,
            auth_sender=auth,
            sender=message.msh(4).split(message.separators[1])[0] or None,
            control_id=message.control_id or None,
            message_type=message.message_type or None,
            charset=message.declared_charset or message.charset,
        )
        try:
            receipt: Receipt = await self.writer.receive(incoming)
        except Exception:
            failure = Issue(
                "store.unavailable",
                "the message could not be stored; send it again later",
                location="MSH-10",
            )
            # A failure unrelated to the message's content (the store is down): HL7 v2
            # original mode answers AR ("system down, internal error": the same message
            # may be accepted later), enhanced mode CE (commit error, not the CR of a
            # message type, version or processing id refused). docs/store.md.
            return self._ack(header, "E" if enhanced else "R", enhanced, failure)
        if receipt.duplicate and receipt.state == "rejected":
            # the store keeps it refused: a message refused for its sender, sent again
            # over a connection that cannot check its sender (Store.receive)
            kept = Issue(
                "store.sender-refused",
                "this message was refused for its sender; it is taken only from the "
                "institution its MSH-4 names, over its own certificate connection",
                record=f"message {message.control_id}",
                location="MSH-4",
            )
            log.warning("MLLP message from %s refused: %s", peer, kept.line())
            return self._ack(header, "R", enhanced, kept)
        if self.processor is not None and not receipt.duplicate:
            self.processor.submit(receipt.id)
        return self._ack(header, "A", enhanced, None)

    def _parse(self, payload: bytes) -> tuple[Message | None, Issue | None]:
        """The frame's message, or why it is refused (with the first message when it
        parsed, so that the ACK speaks its charset and names its MSH-10)."""
        raws = split_messages(payload)
        if not raws:
            return None, Issue("intake.empty", "the MLLP frame is empty", location="MSH")
        message: Message | None = None
        issue: Issue | None = None
        try:
            message = parse_message(raws[0], network=self.network)
        except GatewayError as exc:
            issue = exc.issue
        if len(raws) > 1 and issue is not None and issue.code == "intake.no-msh":
            return None, issue  # text before the MSH: say so, not "several messages"
        if len(raws) > 1:
            # MLLP carries one message per block and the sender awaits one ACK per
            # message: one ACK for several would leave all but one unanswered, several
            # ACKs would be read as the answers to the messages it sends next.
            return message, IntakeError(
                "mllp-several-messages",
                f"the MLLP frame holds {len(raws)} messages; MLLP carries one message per "
                "frame: none of them was accepted, send each in a frame of its own",
                location="MSH",
            ).issue
        if message is not None and not message.control_id.strip():
            # MSH-10 is required (HL7 v2.5 2.15.9.10): the ACK's MSA-2 must name it.
            issue = IntakeError(
                "no-control-id",
                "MSH-10 (message control id) is empty: the message cannot be acknowledged "
                "by its id; nothing was accepted",
                location="MSH-10",
            ).issue
        return message, issue

    def _not_sender(self, message: Message, client: ClientCertificate) -> Issue | None:
        """Why a message may not be taken from the institution ``client`` authenticates,
        or None: MSH-4 must name that institution. An empty or unknown MSH-4 is refused
        too: the record would be filed under MSH-3's namespace or an unregistered one,
        and nothing says the sender may send for it."""
        record = f"message {message.control_id}"
        own = client.institution
        if own is None:  # no name to compare MSH-4 with
            return IntakeError(
                "mllp-client-no-institution",
                "the TLS client certificate names no institution of the network (an "
                "institution certificate's organizationIdentifier is OID:<its OID>, as "
                "gateway keys init issues them; a person's certificate names none): MSH-4 "
                "cannot be checked against it; nothing was accepted",
                record=record,
                location="MSH-4",
            ).issue
        view = Hl7View(message)
        try:
            read = view.first("/MSH-4.1", view.root)
            universal = view.first("/MSH-4.2", view.root)
        except GatewayError as exc:  # a control character in MSH-4: no name to check
            return _sender_issue(record, "MSH-4", f"cannot be read ({exc.issue.message})", own)
        if not read:
            return _sender_issue(record, "MSH-4", "(sending facility) is empty", own)
        # as the mapping reads it (the namespace of its MRNs, its Organization) and as
        # stored (routing reads it): each must find the sender
        stored = message.msh(4).split(message.separators[1])[0]
        for text in dict.fromkeys((read, stored)):
            if (problem := self._names_other(text, own)) is not None:
                return _sender_issue(record, "MSH-4", problem, own)
        found = self.network.find(universal) if universal else None
        if found is not None and found.key != own.key:  # another's OID beside its code
            return _sender_issue(record, "MSH-4.2", f"names {_named(found)}", own)
        return None

    def _names_other(self, text: str, own: Institution) -> str | None:
        """What MSH-4's ``text`` names when it is not ``own``."""
        found = self.network.find(text)
        if found is None:
            return f"names {text[:40]!r}, no institution of the network"
        return f"names {_named(found)}" if found.key != own.key else None

    async def _keep_rejected(
        self, payload: bytes, peer: str | None, auth: str | None, header: _Header, issue: Issue
    ) -> None:
        incoming = Incoming(
            payload,
            "mllp",
            "hl7v2",
            peer=peer,
            auth_sender=auth,
            sender=header.get(4).split(header.separators[1])[0] or None,
            control_id=header.get(10) or None,
            charset=header.charset or None,
            state="rejected",
            issues=(issue,),
        )
        try:
            await self.writer.receive(incoming)
        except Exception:  # refused either way; the log says the store failed
            log.exception("a rejected message could not be kept")

    def _ack(self, header: _Header, code: str, enhanced: bool, issue: Issue | None) -> Ack:
        full = ("C" if enhanced else "A") + code
        if enhanced:
            wanted = header.get(15) or "AL"
            if (
                wanted == "NE"
                or (wanted == "ER" and code == "A")
                or (wanted == "SU" and code != "A")
            ):
                return Ack(full, None)
        return Ack(full, build_ack(header, full, issue))


async def _hang_up(writer: asyncio.StreamWriter, grace: float) -> None:
    """Close the connection, letting what is written leave for up to ``grace`` seconds;
    then abort it: a peer that never reads would otherwise keep it (and its buffers)
    open for good, and a stopping listener waiting for it."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), grace)
    except (Exception, asyncio.CancelledError):  # timed out, reset, or stopping
        writer.transport.abort()


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The listener's TLS context when a certificate and key are configured; with
    ``mllp_tls_ca`` the clients must present certificates signed by it."""
    return server_tls_context(settings, "mllp")


def _named(inst: Institution) -> str:
    """An institution in an error line: its key and facility code (ASCII: the ACK may be
    in a charset without its Chinese name)."""
    return f"institution {inst.key} ({inst.facility})"


def _sender_issue(record: str, where: str, problem: str, own: Institution) -> Issue:
    return IntakeError(
        "mllp-sender-mismatch",
        f"{where} {problem}; the TLS client certificate is that of {_named(own)}: MSH-4 "
        "must name the institution that sends (its MRNs are filed under the identifier "
        "systems of the one MSH-4 names); nothing was accepted",
        record=record,
        location=where,
    ).issue


@contextlib.asynccontextmanager
async def mllp_running(
    settings: Settings,
    store: Store,
    converter: Converter | None = None,
    host: str | None = None,
    port: int | None = None,
) -> AsyncIterator[MllpServer]:
    """An MLLP listener on the store, for as long as the block runs; with a converter,
    stored messages are converted after their ACK (and those left ``received`` by an
    earlier run first). ``server.port`` is the port it listens on."""
    writer = StoreWriter(store)
    audit = store_hook(audit_log(store, settings), channel="mllp")
    processor = Processor(store, converter, audit) if converter is not None else None
    server = MllpServer(settings, writer, processor, converter.network if converter else None)
    try:
        server.port = await server.start(host, port)
        if processor is not None:
            processor.start()
        yield server
    finally:
        await server.close()
        await asyncio.get_running_loop().run_in_executor(None, writer.close)
        if processor is not None:
            await asyncio.get_running_loop().run_in_executor(None, processor.close)
