"""A partner trickling its answer's headers a byte at a time, each byte inside the read
timeout: httpx's timeouts bound each read alone, so the send would wait for as long as
the partner cared to trickle (a byte every 59 s against the default 60 s read timeout:
for ever), holding the worker and every partner behind it. ``delivery_request_deadline``
bounds the whole request; past it the send is ambiguous (asked about, never resent
blindly). A loopback socket server plays the partner."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from gateway import Settings
from gateway.delivery import Deliverer, DeliveryConfig, Outbox, send_part
from gateway.partners import Partner
from gateway.store import Store

from .conftest import bundle

HEADER_BYTES = 100  # trickled one every 0.1 s (10 s in all), then the connection is cut


class HeaderTrickler:
    """Reads one request, then sends a status line and headers one byte at a time,
    counting the bytes it got out before the client hung up."""

    def __init__(self) -> None:
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
            head = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: y\r\n" * 20
            try:
                for byte in head[:HEADER_BYTES]:
                    conn.sendall(bytes([byte]))
                    self.sent += 1
                    time.sleep(0.1)
            except OSError:  # the client hung up
                return

    def close(self) -> None:
        self.listener.close()
        self.thread.join(15)


@pytest.fixture
def trickler() -> Iterator[HeaderTrickler]:
    server = HeaderTrickler()
    yield server
    server.close()


def test_send_part_gives_up_at_the_deadline(trickler: HeaderTrickler) -> None:
    timeout = httpx.Timeout(connect=5.0, read=1.0, write=5.0, pool=5.0)
    base = f"http://127.0.0.1:{trickler.port}/fhir/R4"
    with httpx.Client(base_url=base, timeout=timeout) as client:
        answer = send_part(client, bundle("P-dl", "O-dl"), datetime.now(UTC), deadline=1.0)
    trickler.thread.join(15)
    assert (answer.kind, answer.code, answer.slow) == ("ambiguous", "delivery.ambiguous", True)
    assert "delivery_request_deadline" in answer.reason
    # cut at the deadline (about 1 s: 10 bytes), not after the partner's 100
    assert trickler.sent < HEADER_BYTES // 2, trickler.sent


def test_the_worker_is_not_held_by_trickled_headers(
    trickler: HeaderTrickler, tmp_path: Path
) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    slow = Partner("slow", f"http://127.0.0.1:{trickler.port}/fhir/R4", check_overwrite=False)
    row, _ = outbox.enqueue(slow, bundle("P-headers", "O-headers"))
    config = DeliveryConfig(read_timeout=1.0, request_deadline=1.0, backoff_base=60.0)
    with Deliverer(outbox, {"slow": slow}, config, rng=random.Random(8)) as deliverer:
        deliverer.run_once()
    trickler.thread.join(15)
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("waiting", "delivery.ambiguous")
    assert trickler.sent < HEADER_BYTES // 2, trickler.sent
    store.close()


def test_the_setting_reaches_the_worker(tmp_path: Path) -> None:
    assert DeliveryConfig.from_settings(Settings(home=tmp_path)).request_deadline == 120.0
    env = {"GATEWAY_DELIVERY_REQUEST_DEADLINE": "45"}
    settings = Settings.load(home=tmp_path, env=env)
    assert DeliveryConfig.from_settings(settings).request_deadline == 45.0


def test_the_overwrite_check_is_not_held_by_trickled_headers(
    trickler: HeaderTrickler, tmp_path: Path
) -> None:
    """The overwrite check (docs/delivery.md) asks the partner before the first part:
    its searches are bounded by the same deadline, and a check without an answer is
    retried later, nothing written."""
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    slow = Partner("slow", f"http://127.0.0.1:{trickler.port}/fhir/R4")
    row, _ = outbox.enqueue(slow, bundle("P-check", "O-check"))
    config = DeliveryConfig(read_timeout=1.0, request_deadline=1.0, backoff_base=60.0)
    with Deliverer(outbox, {"slow": slow}, config, rng=random.Random(8)) as deliverer:
        deliverer.run_once()
    trickler.thread.join(15)
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("retrying", "delivery.overwrite-unchecked")
    assert trickler.sent < HEADER_BYTES // 2, trickler.sent
    store.close()
