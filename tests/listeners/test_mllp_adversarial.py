"""The MLLP listener under attack: an interface engine that misbehaves (a resend after
a refusal, Chinese bytes that look like separators, stray control bytes), a network that
misbehaves (a peer that never reads its ACKs, slowloris, half-open and thousands of
connections) and an operator who stops the listener at the worst moment. What
``test_mllp.py`` and ``test_crash.py`` already prove (ACK after the commit, SIGKILL
mid-stream, resends, enhanced mode, limits) is not repeated here."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.listeners import MllpServer, mllp_running
from gateway.logs import configure
from gateway.store import Incoming, MessageFilter, Receipt, Store

from .mllp_client import Client, Listener, example, segments, settings_for, with_control_id


class Running:
    """``mllp_running`` on a thread of its own, exposing the server (its connections)."""

    def __init__(self, settings: Settings, store: Store, converter: Converter | None = None):
        self.settings, self.store, self.converter = settings, store, converter
        self.server: MllpServer | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def connections(self) -> int:
        assert self.server is not None
        return len(self.server._connections)

    def __enter__(self) -> Running:
        self.thread.start()
        assert self._ready.wait(30)
        return self

    def stop(self, wait: float = 30) -> None:
        if self.thread.is_alive():
            assert self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self.thread.join(wait)

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if not self.thread.is_alive():
            self._loop.close()

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            async with mllp_running(
                self.settings, self.store, self.converter, "127.0.0.1", 0
            ) as server:
                self.server = server
                self._ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())


def call(port: int, data: bytes) -> bytes:
    """One message on a connection of its own: its ACK."""
    client = Client(port)
    try:
        return client.call(data)
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# A message the listener refuses (no MSH-9) whose ACK echoes a 60 kB MSH-3: a few
# hundred of them fill every buffer between the listener and a peer that never reads.
BIG_ACK = b"MSH|^~\\&|" + b"A" * 60_000 + b"|LAX2|GW|NJMU2|20260101|||BIG1|P|2.5\rPID|1\r"


def never_reading_peer(port: int) -> tuple[socket.socket, threading.Thread]:
    """A peer with a tiny receive window that sends frames and never reads the ACKs;
    its sending blocks (on a thread) once the listener stops reading."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))

    def flood() -> None:
        try:
            for _ in range(400):
                sock.sendall(b"\x0b" + BIG_ACK + b"\x1c\x0d")
        except OSError:
            pass  # the listener hung up: what the test wants

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    return sock, sender


def hang_up(sock: socket.socket, sender: threading.Thread) -> None:
    with contextlib.suppress(OSError):  # already reset by the listener
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    sender.join(10)


def closed_by_listener(sock: socket.socket, seconds: float) -> bool:
    """Whether the listener closed (or reset) the connection within ``seconds``; what
    it had sent before is read and dropped."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(1 << 20):
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return False


# -- (c) peers that do not play along ------------------------------------------------


def test_a_peer_that_never_reads_its_acks_is_hung_up_on(store: Store, tmp_path: Path) -> None:
    """Writing an ACK waits at most mllp_idle_timeout for the peer to take it: a peer
    that sends and never reads must not hold its connection (and a task) forever."""
    settings = settings_for(tmp_path, mllp_idle_timeout=0.5)
    with Running(settings, store) as listener:
        sock, sender = never_reading_peer(listener.port)
        try:
            assert wait_for(lambda: listener.connections() == 1, 10)
            # stuck writing, not idle: the read timeout alone never fires
            assert wait_for(lambda: listener.connections() == 0, 20), "connection held"
        finally:
            hang_up(sock, sender)
        ack = call(listener.port, example("ref_i12_nsch_to_hkpmc.hl7"))
        assert segments(ack)["MSA"][1] == "AA"
    assert store.count("rejected") == 1  # the same refused bytes, kept once


def test_stopping_the_listener_cuts_a_peer_that_never_reads(store: Store, tmp_path: Path) -> None:
    """SIGTERM (the listener stopped) while a peer does not read: the stop finishes and
    the connection is closed, not left open with ACKs queued for it."""
    settings = settings_for(tmp_path, mllp_idle_timeout=120)  # the write waits long
    listener = Running(settings, store).__enter__()
    sock, sender = never_reading_peer(listener.port)
    try:
        assert wait_for(lambda: listener.connections() == 1, 10)
        time.sleep(1.0)  # the listener is now waiting for the peer to read
        started = time.monotonic()
        listener.stop(wait=20)
        assert not listener.thread.is_alive(), "the listener did not stop"
        assert time.monotonic() - started < 15
        assert closed_by_listener(sock, 10), "the connection stayed open"
    finally:
        hang_up(sock, sender)
        listener.__exit__()


def test_slowloris_and_an_unclosed_frame_are_cut(store: Store, tmp_path: Path) -> None:
    """A frame that trickles in a byte at a time (cut at mllp_frame_timeout, every byte
    resetting the idle timeout), and one whose end block never comes (cut at the idle
    timeout): nothing is stored or acknowledged, and the listener still answers others
    meanwhile."""
    settings = settings_for(tmp_path, mllp_idle_timeout=1.0, mllp_frame_timeout=1.5)
    data = example("ref_i12_nsch_to_hkpmc.hl7")
    with Running(settings, store) as listener:
        slow = socket.create_connection(("127.0.0.1", listener.port))
        unclosed = socket.create_connection(("127.0.0.1", listener.port))
        unclosed.sendall(b"\x0b" + data)  # no 0x1C 0x0D, ever
        started = time.monotonic()
        cut = False
        try:
            for byte in b"\x0b" + data[:200]:
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:
            cut = True
        assert cut or closed_by_listener(slow, 5)
        assert time.monotonic() - started < 15
        assert closed_by_listener(unclosed, 5)
        ack = call(listener.port, with_control_id(data, "AFTER"))
        assert segments(ack)["MSA"][1:3] == ["AA", "AFTER"]
        slow.close()
        unclosed.close()
    assert [m.control_id for m in store.find().items] == ["AFTER"]


def test_a_thousand_silent_connections(store: Store, tmp_path: Path) -> None:
    """A thousand connections that connect and say nothing (or vanish half-open): the
    listener answers a real sender meanwhile and closes them all at the idle timeout."""
    settings = settings_for(tmp_path, mllp_idle_timeout=2.0, mllp_max_connections=2000)
    with Running(settings, store) as listener:
        silent = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(1000)]
        try:
            ack = call(listener.port, example("ref_i12_lax2_to_njmu2.hl7"))
            assert segments(ack, "gb18030")["MSA"][1] == "AA"
            assert wait_for(lambda: listener.connections() == 0, 30)
        finally:
            for sock in silent:
                sock.close()
    assert store.count() == 1


def test_noise_without_a_start_block_is_skipped(store: Store, tmp_path: Path) -> None:
    """A megabyte of noise with no 0x0B (far over mllp_max_bytes), then a real frame on
    the same connection: the noise is skipped, the frame is answered."""
    data = example("ref_i12_nsch_to_hkpmc.hl7")
    settings = settings_for(tmp_path, mllp_max_bytes=len(data) + 100)
    with Listener(settings, store) as listener:
        client = Client(listener.port, timeout=60)
        noise = b"\r\nnoise " * (1 << 17)
        client.sock.sendall(noise)
        ack = client.call(data)
        client.close()
    assert segments(ack)["MSA"][1] == "AA"


# -- (a) an ACK only for what is stored, also at shutdown -------------------------------


class SlowStore(Store):
    """A store whose commits take a while (a busy disk), saying when one starts."""

    started: threading.Event

    def receive_many(self, batch: Sequence[Incoming]) -> list[Receipt]:
        self.started.set()
        time.sleep(1.0)
        return super().receive_many(batch)


def test_stopping_during_a_commit_keeps_the_writer_alive(store_url: str, tmp_path: Path) -> None:
    """The listener stopped while a message's commit is under way: the message is still
    committed, and the writer thread does not die on the ACK nobody waits for (a dead
    writer would leave every later message unanswered and what it queued uncommitted)."""
    store = SlowStore.open(store_url)
    store.started = threading.Event()
    errors: list[BaseException] = []
    hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(args.exc_value)  # type: ignore[misc,assignment]
    try:
        listener = Running(settings_for(tmp_path), store).__enter__()
        client = Client(listener.port)
        client.send(with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "INFLIGHT"))
        assert store.started.wait(10)
        listener.__exit__()
        client.close()
    finally:
        threading.excepthook = hook
    assert errors == []
    assert [m.control_id for m in store.find().items] == ["INFLIGHT"]
    store.close()


def lax2_mislabelled() -> tuple[bytes, str]:
    """A LAX2 referral declaring 8859/1 over its GB 18030 bytes, and its control id."""
    data = example("ref_i12_lax2_to_njmu2.hl7")
    msh, _, rest = data.partition(b"\r")
    fields = msh.split(b"|")
    fields[17] = b"8859/1"
    return b"|".join(fields) + b"\r" + rest, fields[9].decode()


def lax2_decodes(tmp_path: Path) -> Settings:
    """Settings whose network has charset_mismatch: decode for LAX2 (the fix the
    refusal's own message tells the operator to make)."""
    network = tmp_path / "network.yaml"
    seeds = settings_for(tmp_path).network.read_text(encoding="utf-8")
    network.write_text(
        seeds.replace("    facility: LAX2\n", "    facility: LAX2\n    charset_mismatch: decode\n"),
        encoding="utf-8",
    )
    return settings_for(tmp_path, network=network)


def test_the_senders_charset_mismatch_setting_is_honoured(store: Store, tmp_path: Path) -> None:
    """charset_mismatch: decode for LAX2 in the network: its mislabelled message is
    decoded as GB 18030 and acknowledged, over MLLP as by `gateway convert`."""
    data, control = lax2_mislabelled()
    settings = lax2_decodes(tmp_path)
    with Listener(settings, store, Converter(settings)) as listener:
        ack = segments(call(listener.port, data), "latin-1")
        assert ack["MSA"][1:3] == ["AA", control]
        assert wait_for(lambda: store.count("received") == 0, 60)
    (row,) = store.find().items
    assert row.state != "rejected" and row.charset == "8859/1"


def test_a_resend_after_a_refusal_is_accepted_and_converted(store: Store, tmp_path: Path) -> None:
    """LAX2 declares 8859/1 over GB 18030 bytes: refused (AE). The operator sets
    charset_mismatch: decode for LAX2 and LAX2 resends the same bytes: the AA must mean
    a message the gateway holds as received and converts, not the earlier refusal (kept
    as 'rejected', pruned after its retention and never converted)."""
    data, control = lax2_mislabelled()
    with Listener(settings_for(tmp_path), store) as listener:
        first = segments(call(listener.port, data), "latin-1")
    assert first["MSA"][1:3] == ["AE", control]
    assert store.count("rejected") == 1

    fixed = lax2_decodes(tmp_path)
    with Listener(fixed, store, Converter(fixed)) as listener:
        again = segments(call(listener.port, data), "latin-1")
        assert again["MSA"][1:3] == ["AA", control]
        assert wait_for(lambda: store.count("rejected") == 0 and store.count("received") == 0, 60)
    (row,) = store.find(MessageFilter(control_id=control)).items
    assert row.state in ("converted", "failed")  # it went through the conversion
    stored = store.get(row.id)
    assert stored is not None and stored.raw == data
    assert [o.stage for o in stored.outcomes] == ["intake", "convert"]  # the refusal stays


# -- (d)(e) Chinese bytes in the header of a refused message -----------------------------

TRAIL_BYTES = [
    # (charset, codec, facility): a character whose second byte is 0x7C, the field separator
    ("BIG-5", "big5hkscs", "育才書院"),  # 育 = A8 7C, 才 = A4 7E (the repetition separator)
    ("GB 18030-2000", "gb18030", "東華醫院"),  # 東 = 96 7C
]


@pytest.mark.parametrize(("declared", "codec", "facility"), TRAIL_BYTES, ids=["big5", "gb18030"])
def test_a_refused_message_with_separator_bytes_in_chinese_is_answered_as_itself(
    store: Store, tmp_path: Path, declared: str, codec: str, facility: str
) -> None:
    """An error ACK reads the MSH of a message it could not parse: a Chinese sending
    facility whose trail byte is '|' must not shift the fields, or MSA-2 names another
    control id and the ACK loses the message's version and charset."""
    text = (
        f"MSH|^~\\&|HIS|{facility}|GW|NJMU2|20260101|||TB1|P|2.4||||||{declared}\r"
        "PID|1||1^^^LAX2||陳^大文\r"
    )
    with Listener(settings_for(tmp_path), store) as listener:
        ack = call(listener.port, text.encode(codec))
    seg = segments(ack, codec)
    assert seg["MSA"][1] in ("AR", "AE") and seg["MSA"][2] == "TB1"
    assert seg["MSH"][12] == "2.4" and seg["MSH"][18] == declared
    assert seg["MSH"][5:7] == ["HIS", facility]  # MSH-3/4 echoed, in the message's charset


def test_a_mislabelled_charset_is_a_data_type_error(store: Store, tmp_path: Path) -> None:
    """8859/1 declared over GB 18030 bytes is a charset error like any other: AE with
    ERR-3 102 at MSH^1^18 (docs/store.md), not 100 'segment sequence error'."""
    text = (
        "MSH|^~\\&|HIS|LAX2|GW|NJMU2|20260101||ADT^A01|ML1|P|2.5||||||8859/1\r"
        "PID|1||1^^^LAX2||王^伟\r"
    )
    with Listener(settings_for(tmp_path), store) as listener:
        seg = segments(call(listener.port, text.encode("gb18030")), "latin-1")
    assert seg["MSA"][1:3] == ["AE", "ML1"]
    assert seg["ERR"][2] == "MSH^1^18" and seg["ERR"][3].split("^")[0] == "102"
    assert "intake.charset-mislabelled" in seg["ERR"][8]


def test_a_control_byte_in_a_field_is_an_error_not_a_reject(store: Store, tmp_path: Path) -> None:
    """A readable HL7 v2 message with a control byte in PID-5 is an application error
    (AE, 102 at the field): AR is for what is not HL7 v2 or has no readable MSH."""
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "CB1")
    data = data.replace(b"\rPID|", b"\rPID|\x01", 1)
    with Listener(settings_for(tmp_path), store) as listener:
        seg = segments(call(listener.port, data))
    assert seg["MSA"][1:3] == ["AE", "CB1"]
    assert seg["ERR"][2] == "PID^1^1" and seg["ERR"][3].split("^")[0] == "102"


# -- (f) no patient data in the logs -----------------------------------------------------


class LeakyBrokenStore(Store):
    """A store whose failure quotes what it was given, as database drivers do."""

    def receive_many(self, batch: Sequence[Incoming]) -> list[Receipt]:
        raise RuntimeError(f"insert failed for parameters {batch[0].raw!r}")


def test_store_failures_and_conversions_log_no_patient_data(store_url: str, tmp_path: Path) -> None:
    """At debug level, in JSON: a store failure that quotes the message, a refused
    message and a converted one leave no name or identifier of the patient in the log."""
    stream = io.StringIO()
    configure("debug", "json", stream=stream)
    try:
        data = example("ref_i12_lax2_to_njmu2.hl7")
        broken = LeakyBrokenStore.open(store_url)
        with Listener(settings_for(tmp_path), broken) as listener:
            ack = call(listener.port, data)
        assert segments(ack, "gb18030")["MSA"][1] == "AR"  # store down: AR (HL7 v2.5 2.9.2.2 c)
        broken.close()
    finally:
        configure("warning", "text")
    log = stream.getvalue()
    assert "insert failed" not in log and "a received message could not be stored" in log
    text = data.decode("gb18030")
    pid = next(line for line in text.split("\r") if line.startswith("PID|")).split("|")
    for value in (pid[3].split("^")[0], pid[5].split("^")[0], "王"):
        assert value and value not in log


# -- (b) resends ---------------------------------------------------------------------------


def test_the_same_message_on_two_connections_at_once_is_stored_once(
    store: Store, tmp_path: Path
) -> None:
    """A sender that timed out resends on a new connection while the first is still
    being committed (both in one group commit): one row, both answered AA."""
    data = example("ref_i12_lax2_to_njmu2.hl7")
    with Listener(settings_for(tmp_path), store) as listener:
        clients = [Client(listener.port) for _ in range(8)]
        for client in clients:
            client.send(data)
        acks = [segments(c.ack(), "gb18030")["MSA"][1] for c in clients]
        for client in clients:
            client.close()
    assert acks == ["AA"] * 8
    assert store.count() == 1


def test_a_control_id_longer_than_its_column_is_stored_not_refused(
    store: Store, tmp_path: Path
) -> None:
    """MSH-10 of 300 characters (HL7 allows 20, later 199; engines send more): stored and
    acknowledged with the whole id in MSA-2. On PostgreSQL the row was refused and the
    answer was AE 'send it again later': the sender resent it for ever."""
    control = "LONG" + "9" * 296
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), control)
    with Listener(settings_for(tmp_path), store) as listener:
        seg = segments(call(listener.port, data))
        assert seg["MSA"][1:3] == ["AA", control]
        assert segments(call(listener.port, data))["MSA"][1:3] == ["AA", control]
    (row,) = store.find().items
    assert row.control_id == control[:255]


def test_mllp_max_bytes_is_the_largest_message_taken(store: Store, tmp_path: Path) -> None:
    """A message of mllp_max_bytes is taken, one of a byte more is refused (AR 207):
    the bound is the message's, not the message and its end block's."""
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "MAX")
    settings = settings_for(tmp_path, mllp_max_bytes=len(data))
    over = data + b"X"
    with Listener(settings, store) as listener:
        assert segments(call(listener.port, data))["MSA"][1:3] == ["AA", "MAX"]
        seg = segments(call(listener.port, over))
    assert seg["MSA"][1:3] == ["AR", "MAX"] and seg["ERR"][3].startswith("207^")
    assert store.count() == 1


def test_a_refused_message_behind_a_byte_order_mark_is_answered_as_itself(
    store: Store, tmp_path: Path
) -> None:
    """A UTF-8 BOM before the MSH (Windows engines write one) of a message without
    MSH-9: the AR names the message (MSA-2) in its own version and charset."""
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "BOM1")
    data = b"\xef\xbb\xbf" + data.replace(b"REF^I12^REF_I12", b"", 1)
    with Listener(settings_for(tmp_path), store) as listener:
        seg = segments(call(listener.port, data))
    assert seg["MSA"][1:3] == ["AR", "BOM1"]
    assert seg["MSH"][12] == "2.5" and seg["MSH"][18] == "UNICODE UTF-8"


def test_a_start_block_inside_a_frame(store: Store, tmp_path: Path) -> None:
    """0x0B inside content. In a field: stored and acknowledged (conversion drops the
    control byte with a warning). Between two messages (the first frame's end block
    lost): the frame is answered for its first message, as an error, and kept as
    refused; the second is never acknowledged as stored, so its sender resends it."""
    base = example("ref_i12_nsch_to_hkpmc.hl7")
    in_field = with_control_id(base, "VT1").replace(b"\rPID|", b"\rPID|\x0b", 1)
    joined = with_control_id(base, "VT2") + b"\x0b" + with_control_id(base, "VT3")
    with Listener(settings_for(tmp_path), store) as listener:
        assert segments(call(listener.port, in_field))["MSA"][1:3] == ["AA", "VT1"]
        assert segments(call(listener.port, joined))["MSA"][1:3] == ["AE", "VT2"]
        resent = with_control_id(base, "VT3")
        assert segments(call(listener.port, resent))["MSA"][1:3] == ["AA", "VT3"]
    states = {m.control_id: m.state for m in store.find().items}
    assert states == {"VT1": "received", "VT2": "rejected", "VT3": "received"}


# -- (g) limits: connections, idle and whole-frame timeouts ---------------------------------


def test_a_connection_over_mllp_max_connections_is_closed_at_once(
    store: Store, tmp_path: Path
) -> None:
    """mllp_max_connections open: one more is closed before a byte is read (each open
    one may hold a frame of mllp_max_bytes: a flood of them would take the memory),
    logged with its address alone; the open ones are still answered, and a place freed
    is taken again."""
    stream = io.StringIO()
    configure("warning", "text", stream=stream)
    data = example("ref_i12_nsch_to_hkpmc.hl7")
    settings = settings_for(tmp_path, mllp_max_connections=3)
    try:
        with Running(settings, store) as listener:
            clients = [Client(listener.port) for _ in range(3)]
            assert wait_for(lambda: listener.connections() == 3, 10)
            extra = socket.create_connection(("127.0.0.1", listener.port))
            extra_port = extra.getsockname()[1]
            assert closed_by_listener(extra, 10), "the connection over the cap stayed open"
            extra.close()
            for n, client in enumerate(clients):
                ack = segments(client.call(with_control_id(data, f"CAP{n}")))
                assert ack["MSA"][1:3] == ["AA", f"CAP{n}"]
            clients.pop().close()
            assert wait_for(lambda: listener.connections() == 2, 10)
            again = Client(listener.port)
            assert segments(again.call(with_control_id(data, "CAP3")))["MSA"][1] == "AA"
            for client in (*clients, again):
                client.close()
            assert listener.server is not None and listener.server.refused_connections == 1
    finally:
        configure("warning", "text")
    log = stream.getvalue()
    assert f"127.0.0.1:{extra_port}" in log and "mllp_max_connections" in log
    assert store.count() == 4


def test_a_message_trickling_in_longer_than_the_idle_timeout_is_taken(
    store: Store, tmp_path: Path
) -> None:
    """mllp_idle_timeout is time without a byte: a message arriving in pieces over a
    slow line, each gap shorter than the timeout, the whole far longer, is acknowledged
    (cut at the idle timeout, the sender would resend it for ever)."""
    data = with_control_id(example("ref_i12_nsch_to_hkpmc.hl7"), "SLOW1")
    framed = b"\x0b" + data + b"\x1c\x0d"
    settings = settings_for(tmp_path, mllp_idle_timeout=0.5)
    with Listener(settings, store) as listener:
        client = Client(listener.port)
        step = len(framed) // 10 + 1
        for at in range(0, len(framed), step):
            client.sock.sendall(framed[at : at + step])
            time.sleep(0.2)  # 11 pieces: about 2 s in all, four idle timeouts
        assert segments(client.ack())["MSA"][1:3] == ["AA", "SLOW1"]
        client.close()
    assert [m.control_id for m in store.find().items] == ["SLOW1"]


def test_the_frame_timeout_runs_from_the_start_block(store: Store, tmp_path: Path) -> None:
    """mllp_frame_timeout bounds a frame, not a connection: a sender quiet for longer
    between messages (within the idle timeout) is answered; a frame unfinished at it is
    cut."""
    data = example("ref_i12_nsch_to_hkpmc.hl7")
    settings = settings_for(tmp_path, mllp_idle_timeout=30, mllp_frame_timeout=0.5)
    with Listener(settings, store) as listener:
        client = Client(listener.port)
        time.sleep(1.0)
        assert segments(client.call(with_control_id(data, "Q1")))["MSA"][1] == "AA"
        time.sleep(1.0)
        assert segments(client.call(with_control_id(data, "Q2")))["MSA"][1] == "AA"
        client.sock.sendall(b"\x0b" + data[:50])  # then nothing: cut at the frame timeout
        assert closed_by_listener(client.sock, 10)
        client.close()
    assert sorted(m.control_id or "" for m in store.find().items) == ["Q1", "Q2"]


UNDECLARED = [("big5hkscs", "育才書院"), ("gb18030", "東華醫院")]  # 育 A8 7C, 東 96 7C


@pytest.mark.parametrize(("codec", "facility"), UNDECLARED, ids=["big5", "gb18030"])
def test_no_msh9_behind_a_trail_byte_without_msh18_is_a_reject_naming_msh9(
    store: Store, tmp_path: Path, codec: str, facility: str
) -> None:
    """No MSH-18, MSH-9 empty, a sending facility whose trail byte is '|': AR 101 at
    MSH-9 (not AE for an undeclared charset), MSA-2 naming the message's own MSH-10."""
    text = f"MSH|^~\\&|HIS|{facility}|GW|NJMU2|20260101|||TB9|P|2.4\rPID|1||1^^^LAX2||陳^大文\r"
    with Listener(settings_for(tmp_path), store) as listener:
        seg = segments(call(listener.port, text.encode(codec)), "latin-1")
    assert seg["MSA"][1:3] == ["AR", "TB9"] and seg["MSH"][12] == "2.4"
    assert seg["ERR"][1].split("^")[:4] == ["MSH", "1", "9", "101&Required field missing&HL70357"]
