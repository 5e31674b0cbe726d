"""Adversarial review of delivery: answers only a raw connection can give — a body a
byte at a time, each byte inside the read timeout, so that no timeout ever fires; a
body that is not what its Content-Encoding says. A loopback socket server plays the
partner: the partner server has no such fault."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store

from .conftest import bundle

BYTES = 60  # the body it trickles, one byte every 0.1 s: 6 s in all


class Trickler:
    """Reads one request, answers 200 with headers at once, then its body a byte at a
    time; counts the bytes it got out before the client hung up. ``answer``: a whole
    answer to send instead."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            if self.answer is not None:
                conn.sendall(self.answer)
                return
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
                + f"Content-Length: {BYTES * 10}\r\n\r\n".encode()
            )
            try:
                for _ in range(BYTES):
                    conn.sendall(b" ")
                    self.sent += 1
                    time.sleep(0.1)
            except OSError:  # the client hung up
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def trickler() -> Iterator[Trickler]:
    server = Trickler()
    yield server
    server.close()


def test_an_answer_trickled_a_byte_at_a_time_does_not_hold_the_worker(
    trickler: Trickler, tmp_path: Path
) -> None:
    """Each byte comes inside the 0.5 s read timeout, so httpx never times out: the
    worker read the answer for as long as the partner cared to trickle it (here 6 s;
    a byte every 59 s against the default 60 s timeout: for ever), holding every other
    partner's records behind it. The body must come within the read timeout of its
    headers; past that the send is ambiguous (asked about, never resent blindly)."""
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    slow = Partner("slow", f"http://127.0.0.1:{trickler.port}/fhir/R4", check_overwrite=False)
    row, _ = outbox.enqueue(slow, bundle("P-trickle", "O-trickle"))
    config = DeliveryConfig(read_timeout=0.5, backoff_base=60.0, breaker_threshold=50)
    with Deliverer(outbox, {"slow": slow}, config, rng=random.Random(8)) as deliverer:
        deliverer.run_once()
    trickler.thread.join(10)
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("waiting", "delivery.ambiguous")
    assert trickler.sent < BYTES // 2, trickler.sent
    store.close()


@pytest.mark.parametrize(
    "status,expected",
    [(200, ("waiting", "delivery.ambiguous")), (503, ("retrying", "delivery.partner-unavailable"))],
)
def test_an_answer_that_is_not_what_its_content_encoding_says_is_classified(
    status: int, expected: tuple[str, str], tmp_path: Path
) -> None:
    """``Content-Encoding: gzip`` over bytes that are not gzip: httpx raises
    DecodingError (no TransportError) while the body is read; it escaped the send, the
    row stayed `sending` until its lease ran out, and a partner that never applied it
    had the record go round (sent, raised, interrupted, asked, sent) for ever, its
    attempts never counted. The status is known: a 2xx unread is ambiguous, a 503
    retried."""
    body = b"this is not gzip"
    server = Trickler(
        f"HTTP/1.1 {status} X\r\nContent-Type: application/fhir+json\r\n".encode()
        + f"Content-Encoding: gzip\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    raw = Partner("raw", f"http://127.0.0.1:{server.port}/fhir/R4", check_overwrite=False)
    row, _ = outbox.enqueue(raw, bundle("P-gzip", "O-gzip"))
    with Deliverer(outbox, {"raw": raw}, DeliveryConfig(backoff_base=60.0)) as deliverer:
        deliverer.run_once()
    server.close()
    record = outbox.require(row)
    assert (record.state, record.last_error, record.attempts) == (*expected, 1)
    store.close()
