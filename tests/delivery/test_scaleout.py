"""Scale-out on PostgreSQL: ``gateway work --workers 3`` (three real worker processes
under their supervisor) delivers 1,200 queued records to the partner server
(``../shared/partner-fhir``): each arrives exactly once and a patient's records in the
order queued — as they are; with one worker SIGKILLed every few seconds (and restarted
by the supervisor); and with the partner failing 20 % of writes with 503.

How it is checked at the partner: each record is a small transaction of two updates by
id (no conditional search, which the partner's in-memory store makes slow as it fills):
its patient, carrying the record's place in that patient's sequence, and a
ServiceRequest of its own identifier. The partner keeps a version for every update
applied, even one that changes nothing, so a patient's history is the sequence of its
records applied: exactly ``0, 1, ..., n-1`` means each arrived once, in order. The
ServiceRequests are counted by identifier too.

Runs when GATEWAY_TEST_DATABASE_URL names a PostgreSQL server (.ci/run starts one)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway.delivery import Outbox, label_of, order_key_of
from gateway.partners import Partner
from gateway.store import Store, metadata, utcnow
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer, _cache_home
from tests.store.dbs import PG_URL, SKIP_PG, database

from .conftest import MRN, ORDERS

pytestmark = pytest.mark.skipif(not PG_URL, reason=SKIP_PG)

RECORDS = 1200
PATIENTS = 60  # 20 records each: order per patient is tested 60 times over
WORKERS = 3
SEQUENCE = "https://gateway.example/fhir/StructureDefinition/test-sequence"
PARTNER_KEY = "njmu2"  # a partner of the demo network, served here by the test's server
# Quick retries and a short lease (over the send timeouts), so a killed worker's row is
# asked about within seconds; a breaker that does not sit out the 503s for a minute.
ENV = {
    "GATEWAY_DELIVERY_POLL_SECONDS": "0.05",
    "GATEWAY_DELIVERY_BACKOFF_BASE": "0.1",
    "GATEWAY_DELIVERY_BACKOFF_CAP": "0.5",
    "GATEWAY_DELIVERY_CONNECT_TIMEOUT": "2",
    "GATEWAY_DELIVERY_READ_TIMEOUT": "5",
    "GATEWAY_DELIVERY_WRITE_TIMEOUT": "5",
    "GATEWAY_DELIVERY_LEASE_SECONDS": "8",
    "GATEWAY_DELIVERY_MAX_ATTEMPTS": "100",
    "GATEWAY_DELIVERY_BREAKER_THRESHOLD": "20",
    "GATEWAY_DELIVERY_BREAKER_COOLDOWN": "1",
    "GATEWAY_LOG_LEVEL": "info",
}
_outbox = metadata.tables["outbox"]


def _id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, name))


def record(n: int, patients: int = PATIENTS) -> dict[str, Any]:
    """Record ``n``: patient ``n % patients``, the ``n // patients``-th of that patient."""
    patient, seq = f"P{n % patients}", n // patients
    pid, sid = _id(patient), _id(f"O{n}")
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{_id(f'rec-{n}')}"},
        "entry": [
            {
                "fullUrl": f"urn:uuid:{pid}",
                "resource": {
                    "resourceType": "Patient",
                    "id": pid,
                    "identifier": [{"system": MRN, "value": patient}],
                    "extension": [{"url": SEQUENCE, "valueInteger": seq}],
                    "name": [{"text": "陳大文"}],
                },
                "request": {"method": "PUT", "url": f"Patient/{pid}"},
            },
            {
                "fullUrl": f"urn:uuid:{sid}",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "id": sid,
                    "identifier": [{"system": ORDERS, "value": f"O{n}"}],
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": f"urn:uuid:{pid}"},
                },
                "request": {"method": "PUT", "url": f"ServiceRequest/{sid}"},
            },
        ],
    }


def enqueue(store: Store, base: str, count: int = RECORDS, patients: int = PATIENTS) -> None:
    """Queue ``count`` records for the partner at ``base``, in order (patient P's in
    sequence): the rows ``Outbox.enqueue`` makes, inserted in one statement (1,200
    enqueues one by one would cost the test half a minute)."""
    target = Partner(PARTNER_KEY, base, 8)
    now = utcnow()
    rows = []
    for n in range(count):
        bundle = record(n, patients)
        parts = target.split(bundle)
        rows.append(
            {
                "partner": PARTNER_KEY,
                "label": label_of(bundle),
                "order_key": order_key_of(bundle),
                "dedup_key": hashlib.sha256(f"scaleout|{n}".encode()).hexdigest(),
                "parts": orjson.dumps(parts),
                "part_count": len(parts),
                "part": 0,
                "state": "pending",
                "attempts": 0,
                "next_at": now,
                "created_at": now,
                "updated_at": now,
            }
        )
    with store.engine.begin() as conn:
        conn.execute(_outbox.insert(), rows)


def start_workers(home: Path, url: str, base: str, workers: int) -> subprocess.Popen[bytes]:
    """``gateway work --workers N`` on ``url``, its partner served at ``base``; the
    processes' log goes to ``home/work.log``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "partners.yaml").write_text(
        f"partners:\n  {PARTNER_KEY}:\n    base: {base}\n    max_entries: 8\n", encoding="utf-8"
    )
    env = {**os.environ, **ENV, "GATEWAY_DATABASE_URL": url}
    command = [sys.executable, "-m", "gateway", "--home", str(home), "work"]
    with (home / "work.log").open("ab") as log:
        return subprocess.Popen(
            [*command, "--workers", str(workers)], env=env, cwd=REPO, stderr=log
        )


def children(supervisor: subprocess.Popen[bytes]) -> list[int]:
    path = Path(f"/proc/{supervisor.pid}/task/{supervisor.pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def delivered(store: Store) -> int:
    query = sa.select(sa.func.count()).where(_outbox.c.state == "delivered")
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def wait_delivered(
    store: Store, supervisor: subprocess.Popen[bytes], home: Path, seconds: float = 900
) -> None:
    deadline = time.monotonic() + seconds
    while delivered(store) < RECORDS:
        if supervisor.poll() is not None or time.monotonic() > deadline:
            log = (home / "work.log").read_text(errors="replace")[-4000:]
            pytest.fail(f"{delivered(store)} of {RECORDS} delivered; workers' log:\n{log}")
        time.sleep(0.5)


def stop(supervisor: subprocess.Popen[bytes]) -> None:
    supervisor.send_signal(signal.SIGTERM)
    try:
        assert supervisor.wait(60) == 0  # graceful: every worker let go and exited
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def assert_once_in_order(partner: PartnerServer, store: Store) -> None:
    """At the partner: each record's ServiceRequest once (by identifier); each
    patient's history exactly its records, each once, in the order queued."""
    states = Counter(r.state for r in Outbox(store).records(limit=RECORDS + 1))
    assert states == {"delivered": RECORDS}
    found = partner.search(f"ServiceRequest?_count={RECORDS * 2}")
    idents = Counter(i["value"] for r in found for i in r["identifier"] if i["system"] == ORDERS)
    assert len(idents) == RECORDS and set(idents.values()) == {1}
    assert partner.count() == {"Patient": PATIENTS, "ServiceRequest": RECORDS}
    wrong = {}
    for p in range(PATIENTS):
        history = partner.http.get(f"/Patient/{_id(f'P{p}')}/_history").json()
        applied = [e["resource"]["extension"][0]["valueInteger"] for e in history["entry"]]
        applied.reverse()  # the history is newest first
        if applied != list(range(RECORDS // PATIENTS)):
            wrong[f"P{p}"] = applied
    assert wrong == {}


@pytest.fixture
def pg_store(tmp_path: Path) -> Iterator[tuple[str, Store]]:
    for url in database("postgresql", tmp_path):
        store = Store.open(url)
        yield url, store
        store.close()


@pytest.fixture
def queued(pg_store: tuple[str, Store], partner: PartnerServer) -> Iterator[tuple[str, Store]]:
    """1,200 records queued on PostgreSQL for an empty partner."""
    partner.reset()
    url, store = pg_store
    enqueue(store, partner.base)
    yield url, store
    partner.http.post("/$fault", json={"mode": "none"}).raise_for_status()


def test_three_workers_deliver_each_record_once_in_order(
    queued: tuple[str, Store], partner: PartnerServer, tmp_path: Path
) -> None:
    url, store = queued
    home = tmp_path / "home"
    supervisor = start_workers(home, url, partner.base, WORKERS)
    try:  # stopped gracefully half-way: each worker finishes its send, lets go of the rest
        while delivered(store) < RECORDS // 2 and supervisor.poll() is None:
            time.sleep(0.2)
        assert len(children(supervisor)) == WORKERS
    finally:
        stop(supervisor)
    o = _outbox.c
    with store.engine.connect() as conn:
        leased = conn.execute(
            sa.select(sa.func.count()).where(
                sa.or_(o.state == "sending", o.lease_until.is_not(None))
            )
        ).scalar_one()
    assert leased == 0 and delivered(store) < RECORDS  # nothing left held by a lease
    supervisor = start_workers(home, url, partner.base, WORKERS)
    try:
        wait_delivered(store, supervisor, home)
    finally:
        stop(supervisor)
    assert_once_in_order(partner, store)
    log = (home / "work.log").read_text(errors="replace")
    assert len(re.findall(r"delivery worker \d stopped", log)) == 2 * WORKERS  # graceful exits


def test_a_worker_killed_every_few_seconds_loses_and_duplicates_nothing(
    queued: tuple[str, Store], partner: PartnerServer, tmp_path: Path
) -> None:
    url, store = queued
    supervisor = start_workers(tmp_path / "home", url, partner.base, WORKERS)
    killed: list[int] = []
    try:
        # Every 3 s one worker is killed, in turn, while all three run (the supervisor
        # restarted the last one killed); until 90 % are delivered.
        while delivered(store) < RECORDS * 0.9 and supervisor.poll() is None:
            time.sleep(3)
            alive = sorted(children(supervisor))
            if len(alive) == WORKERS:
                victim = alive[len(killed) % WORKERS]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
        wait_delivered(store, supervisor, tmp_path / "home")
        deadline = time.monotonic() + 60
        while len(children(supervisor)) < WORKERS and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(children(supervisor)) == WORKERS  # each killed one was started again
    finally:
        stop(supervisor)
    assert len(killed) >= 2
    assert_once_in_order(partner, store)
    # A row cut mid-send was asked about, never sent blindly again: the first move out
    # of waiting after its interruption is the partner's answer to the question.
    events = metadata.tables["outbox_events"]
    with store.engine.connect() as conn:
        cut = conn.execute(
            sa.select(events.c.outbox_id).where(events.c.reason.like("delivery.interrupted%"))
        ).scalars()
        rows = sorted(set(cut))
    for row in rows:
        path = Outbox(store).events(row)
        start = next(n for n, e in enumerate(path) if e.reason.startswith("delivery.interrupted"))
        left = next(e for e in path[start + 1 :] if e.to_state != "waiting")
        assert left.reason.startswith("asked: "), [e.reason for e in path]


class FaultFeeder(threading.Thread):
    """Makes the partner fail about ``share`` of the writes it receives with 503: it
    reads the partner's request log and arms a one-request fault (``$fault`` with
    ``count: 1``) whenever the failed writes fall below that share."""

    def __init__(self, partner: PartnerServer, share: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.partner, self.share = partner, share
        port = partner.base.split(":")[2].split("/")[0]
        self.log = _cache_home() / "run" / f"{port}.log"
        self.offset = self.log.stat().st_size
        self.writes = self.failed = 0
        self.done = threading.Event()

    def run(self) -> None:
        armed = False
        with self.log.open("rb") as log:
            log.seek(self.offset)
            while not self.done.is_set():
                for line in log.readlines():
                    if b" POST /fhir/R4/ " in line:  # a transaction (not $fault, $reset)
                        self.writes += 1
                        if b"fault: 503" in line:
                            self.failed += 1
                            armed = False
                if not armed and self.failed < self.share * (self.writes + 1):
                    self.partner.http.post("/$fault", json={"mode": "503", "count": 1})
                    armed = True
                self.done.wait(0.01)


def test_a_partner_failing_a_fifth_of_writes_with_503_gets_each_record_once(
    queued: tuple[str, Store], partner: PartnerServer, tmp_path: Path
) -> None:
    url, store = queued
    feeder = FaultFeeder(partner)
    feeder.start()
    supervisor = start_workers(tmp_path / "home", url, partner.base, WORKERS)
    try:
        wait_delivered(store, supervisor, tmp_path / "home")
    finally:
        feeder.done.set()
        feeder.join(10)
        stop(supervisor)
    # About a fifth of the writes failed (the feeder arms one at a time).
    assert 0.15 <= feeder.failed / feeder.writes <= 0.25, (feeder.failed, feeder.writes)
    assert_once_in_order(partner, store)
    with store.engine.connect() as conn:
        events = metadata.tables["outbox_events"]
        retried = conn.execute(
            sa.select(sa.func.count()).where(events.c.status == 503)
        ).scalar_one()
    assert retried >= RECORDS * 0.15  # each 503 seen by a worker: retried, not lost
