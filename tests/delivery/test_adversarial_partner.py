"""Adversarial review of delivery against the real partner server
(../shared/partner-fhir): its faults switched at run time — a connection dropped on
every write, 429 with Retry-After, an answer slower than a worker's lease while a second
worker runs. Records end delivered, or final with a reason; nothing is applied twice
at the partner (its version history says how often a resource was written)."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from gateway.delivery import Deliverer, DeliveryConfig, DeliveryService, Outbound, Outbox
from gateway.partners import Partner
from gateway.store import Store, open_store
from tests.partner.conftest import PartnerServer

from .conftest import ORDERS, bundle


@pytest.fixture
def server(partner: PartnerServer) -> Iterator[PartnerServer]:
    """The session's partner, emptied, its fault switched off again afterwards."""
    partner.reset()
    yield partner
    partner.http.post("/$fault", json={"mode": "none"}).raise_for_status()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    yield Outbox(store)  # the real clock: the partner's faults take real time
    store.close()


def _fault(server: PartnerServer, mode: str, count: int | None = None) -> None:
    body: dict[str, Any] = {"mode": mode} if count is None else {"mode": mode, "count": count}
    server.http.post("/$fault", json=body).raise_for_status()


def _versions(server: PartnerServer, order: str) -> int:
    """How many times the partner wrote the order's ServiceRequest (0: never)."""
    found = server.search(f"ServiceRequest?identifier={ORDERS}|{order}")
    if not found:
        return 0
    history = server.http.get(f"/ServiceRequest/{found[0]['id']}/_history")
    history.raise_for_status()
    return len(history.json().get("entry") or [])


def test_a_partner_dropping_every_write_ends_the_record_given_up_not_cycling(
    server: PartnerServer, outbox: Outbox
) -> None:
    """Every POST read and the connection closed unanswered (nothing written): each is
    ambiguous, asked about (absent), sent again... the ambiguous path never counted its
    sends, so the record went round forever. Now: dead, delivery.gave-up, with the
    sends each preceded by a question, and nothing at the partner."""
    config = DeliveryConfig(
        backoff_base=0.02, backoff_cap=0.05, max_attempts=3, breaker_threshold=50
    )
    medplum = Partner("partner", server.base, check_overwrite=False)
    row, _ = outbox.enqueue(medplum, bundle("P-drop", "O-drop"))
    _fault(server, "drop")
    with Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(1)) as deliverer:
        for _ in range(300):
            deliverer.run_once()
            if outbox.require(row).state in ("delivered", "dead", "held"):
                break
            time.sleep(0.02)
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("dead", "delivery.gave-up")
    events = outbox.events(row)
    sends = [e for e in events if e.to_state == "sending"]
    asked = [e for e in events if e.from_state == "waiting"]
    assert len(sends) == config.max_attempts and len(asked) == config.max_attempts
    assert all(e.reason.startswith("asked: ") for e in asked[:-1])
    assert "delivery.gave-up" in asked[-1].reason
    _fault(server, "none")
    assert _versions(server, "O-drop") == 0


def test_429_with_retry_after_from_the_partner_is_waited_for(
    server: PartnerServer, outbox: Outbox
) -> None:
    config = DeliveryConfig(backoff_base=0.01, backoff_cap=0.02, max_attempts=5)
    medplum = Partner("partner", server.base, check_overwrite=False)
    row, _ = outbox.enqueue(medplum, bundle("P-429", "O-429"))
    _fault(server, "429:2", count=1)
    with Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(2)) as deliverer:
        deliverer.run_once()
        record = outbox.require(row)
        assert record.state == "retrying" and record.last_status == 429
        assert record.next_at is not None
        assert record.next_at - record.updated_at >= timedelta(seconds=2)
        assert deliverer.run_once() == 0  # not before the partner's time
        time.sleep((record.next_at - outbox.clock()).total_seconds() + 0.05)
        deliverer.run_once()
    assert outbox.require(row).state == "delivered"
    assert _versions(server, "O-429") == 1


def test_an_answer_slower_than_the_lease_is_never_sent_again_by_another_worker(
    server: PartnerServer, outbox: Outbox
) -> None:
    """Worker A's send is answered after 2.5 s; its lease is 1 s (with the default
    300 s, a partner trickling its answer a byte at a time, each read inside the read
    timeout, does the same). Worker B, meanwhile, took the row as interrupted, asked
    (not there yet), and sent it again while A's request was still in flight: two
    workers sending one record at once, the partner writing it twice. A's lease is now
    kept alive while it sends; B leaves the row alone."""
    config = DeliveryConfig(
        backoff_base=0.02,
        backoff_cap=0.05,
        read_timeout=10.0,
        lease=timedelta(seconds=1),
        claim_lease=timedelta(seconds=1),
        breaker_threshold=50,
    )
    medplum = Partner("partner", server.base, check_overwrite=False)
    row, _ = outbox.enqueue(medplum, bundle("P-slow", "O-slow"))
    _fault(server, "slow:2.5", count=1)
    a = Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(3))
    b = Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(4))
    sender = threading.Thread(target=a.run_once)
    try:
        sender.start()
        while sender.is_alive():
            b.run_once()
            time.sleep(0.05)
        sender.join()
        for _ in range(100):  # whatever is left, by either
            if outbox.require(row).state == "delivered":
                break
            b.run_once()
            time.sleep(0.05)
    finally:
        sender.join()
        a.close()
        b.close()
    assert outbox.require(row).state == "delivered"
    events = outbox.events(row)
    assert [e.to_state for e in events] == ["pending", "sending", "delivered"], [
        (e.from_state, e.to_state, e.reason) for e in events
    ]
    assert _versions(server, "O-slow") == 1


def test_retry_after_holds_back_every_record_for_that_partner_not_only_the_one_refused(
    server: PartnerServer, outbox: Outbox
) -> None:
    """429 with Retry-After: 3 is the partner saying 'no request for 3 s'. Only the
    refused record was rescheduled; the next ones in the batch were sent at once (each
    refused again), the partner's request honoured for none but the first."""
    config = DeliveryConfig(
        backoff_base=0.01, backoff_cap=30.0, max_attempts=5, breaker_threshold=50
    )
    medplum = Partner("partner", server.base, check_overwrite=False)
    rows = [outbox.enqueue(medplum, bundle(f"P-rl{n}", f"O-rl{n}"))[0] for n in range(3)]
    _fault(server, "429:3", count=100)
    with Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(5)) as deliverer:
        deliverer.run_once()
        deliverer.run_once()
        remaining = server.http.get("/$fault").json()["remaining"]
        assert 100 - remaining == 1  # one request, then none before the partner's time
        assert [outbox.require(r).state for r in rows] == ["retrying", "pending", "pending"]
        _fault(server, "none")
        time.sleep(3.1)
        for _ in range(3):
            deliverer.run_once()
    assert [outbox.require(r).state for r in rows] == ["delivered"] * 3
    assert [_versions(server, f"O-rl{n}") for n in range(3)] == [1, 1, 1]


def test_retry_after_holds_back_the_other_workers_too(
    server: PartnerServer, outbox: Outbox
) -> None:
    """Two workers on one store (``gateway work --workers 2``): the partner's 429 with
    Retry-After: 3 answered to the first pauses the second as well. Before, each worker
    learnt the pause only from its own refused request: one more request a worker."""
    config = DeliveryConfig(
        backoff_base=0.01, backoff_cap=30.0, max_attempts=5, breaker_threshold=50
    )
    medplum = Partner("partner", server.base, check_overwrite=False)
    rows = [outbox.enqueue(medplum, bundle(f"P-rw{n}", f"O-rw{n}"))[0] for n in range(2)]
    _fault(server, "429:3", count=100)
    first = Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(5))
    second = Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(6))
    with first, second:
        assert first.run_once(limit=1) == 1  # refused: Retry-After 3
        assert second.run_once() == 0  # claims nothing of the paused partner
        remaining = server.http.get("/$fault").json()["remaining"]
        assert 100 - remaining == 1  # the only request the partner received
        assert [outbox.require(r).state for r in rows] == ["retrying", "pending"]
        _fault(server, "none")
        time.sleep(3.1)
        for _ in range(3):
            second.run_once()
    assert [outbox.require(r).state for r in rows] == ["delivered"] * 2
    assert [_versions(server, f"O-rw{n}") for n in range(2)] == [1, 1]


def test_a_stop_that_cannot_wait_for_the_answer_loses_and_repeats_nothing(
    server: PartnerServer, tmp_path: Path
) -> None:
    """`gateway serve` stopped while the partner takes 3 s to answer, and the stop
    allowed only 0.5 s: the service closes the partner's connections under the send.
    The row must not be lost nor sent blindly again: the next worker asks first, and
    the partner, which did apply it, holds it once."""
    settings = dataclasses.replace(
        Settings.load(home=tmp_path, env={}),
        delivery_poll_seconds=0.05,
        delivery_backoff_base=0.05,
        delivery_backoff_cap=0.2,
    )
    store = open_store(settings)
    medplum = Partner("partner", server.base, check_overwrite=False)
    outbound = Outbound(settings, store, partners={"partner": medplum})
    service = DeliveryService(settings, store, outbound=outbound, feed_every=60)
    row, _ = outbound.outbox.enqueue(medplum, bundle("P-stop", "O-stop"))
    _fault(server, "slow:3", count=1)
    service.start()
    try:
        assert _until(lambda: outbound.outbox.require(row).state == "sending")
        time.sleep(0.2)
    finally:
        service.stop(timeout=0.5)
    assert _until(lambda: not any(t.is_alive() for t in service._threads), 10)
    after_stop = outbound.outbox.require(row).state
    assert after_stop in ("waiting", "sending", "delivered"), after_stop
    time.sleep(3.5)  # the partner finishes what it received
    config = DeliveryConfig(backoff_base=0.02, backoff_cap=0.05, lease=timedelta(seconds=1))
    with Deliverer(outbound.outbox, {"partner": medplum}, config) as deliverer:
        assert _until(
            lambda: deliverer.run_once() >= 0 and outbound.outbox.require(row).state == "delivered",
            10,
        ), [(e.from_state, e.to_state, e.reason) for e in outbound.outbox.events(row)]
    reasons = [e.reason for e in outbound.outbox.events(row)]
    if after_stop != "delivered":
        assert any(r.startswith("asked: ") for r in reasons), reasons
    assert _versions(server, "O-stop") == 1
    store.close()


def _until(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("mode", ["429:0", "503", "drop"])
def test_a_partner_failing_every_write_is_not_hammered(
    mode: str, server: PartnerServer, outbox: Outbox
) -> None:
    """No busy loop: the worker's own loop (``run``, default settings but a short poll)
    for 1.5 s against a partner refusing every write, 'Retry-After: 0' included: the
    breaker stops it after its threshold, whatever the records queued."""
    config = DeliveryConfig(poll=0.05)
    medplum = Partner("partner", server.base, check_overwrite=False)
    for n in range(20):
        outbox.enqueue(medplum, bundle(f"P-busy{n}", f"O-busy{n}"))
    _fault(server, mode, count=10_000)
    stop = threading.Event()
    with Deliverer(outbox, {"partner": medplum}, config) as deliverer:
        loop = threading.Thread(target=deliverer.run, args=(stop,))
        loop.start()
        time.sleep(1.5)
        stop.set()
        loop.join()
    used = 10_000 - server.http.get("/$fault").json()["remaining"]
    assert 1 <= used <= config.breaker_threshold


def test_two_workers_on_one_sqlite_store_never_send_a_record_twice(
    server: PartnerServer, tmp_path: Path
) -> None:
    """Two workers (each its own Store on one SQLite file, as two processes would have),
    short leases, the partner slow on some writes: every record sent once, by one of
    them, and written once at the partner."""
    url = f"sqlite:///{tmp_path / 'gateway.db'}"
    stores = [Store.open(url), Store.open(url)]
    boxes = [Outbox(s) for s in stores]
    medplum = Partner("partner", server.base, check_overwrite=False)
    rows = [boxes[0].enqueue(medplum, bundle(f"P-two{n}", f"O-two{n}"))[0] for n in range(24)]
    _fault(server, "slow:2.5", count=6)
    config = DeliveryConfig(
        backoff_base=0.02,
        backoff_cap=0.05,
        lease=timedelta(seconds=1),
        claim_lease=timedelta(seconds=1),
        batch=3,
        poll=0.02,
        breaker_threshold=50,
    )
    stop = threading.Event()
    workers = [
        Deliverer(box, {"partner": medplum}, config, rng=random.Random(n))
        for n, box in enumerate(boxes)
    ]
    loops = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    try:
        for loop in loops:
            loop.start()
        assert _until(lambda: all(boxes[0].require(r).state == "delivered" for r in rows), 120), [
            boxes[0].require(r).state for r in rows
        ]
    finally:
        stop.set()
        for loop in loops:
            loop.join()
        for w in workers:
            w.close()
    sent_once = [(None, "pending"), ("pending", "sending"), ("sending", "delivered")]
    # A worker starved past its lease (a loaded machine) has its row taken over; the other
    # worker then asks the partner instead of sending again: still one send.
    asked = [*sent_once[:2], ("sending", "waiting"), ("waiting", "delivered")]
    for r in rows:
        moves = [(e.from_state, e.to_state) for e in boxes[0].events(r)]
        assert moves in (sent_once, asked), (
            r,
            [(e.from_state, e.to_state, e.reason) for e in boxes[0].events(r)],
        )
        if moves == asked:
            assert boxes[0].events(r)[-1].reason.startswith("asked:")
    assert [_versions(server, f"O-two{n}") for n in range(24)] == [1] * 24
    for s in stores:
        s.close()


def test_a_partner_slower_than_the_read_timeout_is_given_that_long_before_the_question(
    server: PartnerServer, outbox: Outbox
) -> None:
    """The partner takes 1.5 s; the read timeout is 1 s. The question came after
    delivery_backoff_base (0.05 s here, 2 s by default against a 60 s timeout): the
    partner, still at work, had nothing yet, so the part was sent again and the partner
    applied it twice (a second version of the ServiceRequest). A partner that made us
    wait out a timeout is given as long again before it is asked."""
    config = DeliveryConfig(
        backoff_base=0.05, backoff_cap=0.1, read_timeout=1.0, breaker_threshold=50
    )
    medplum = Partner("partner", server.base, check_overwrite=False)
    row, _ = outbox.enqueue(medplum, bundle("P-late", "O-late"))
    _fault(server, "slow:1.5", count=1)
    with Deliverer(outbox, {"partner": medplum}, config, rng=random.Random(9)) as deliverer:
        assert _until(
            lambda: deliverer.run_once() >= 0 and outbox.require(row).state == "delivered", 20
        )
    time.sleep(2)  # anything still on its way lands
    reasons = [e.reason for e in outbox.events(row)]
    assert any(r.startswith("asked: part 1/1 delivered") for r in reasons), reasons
    assert _versions(server, "O-late") == 1
