"""``gateway serve`` (a real process, its delivery worker on) delivering 200 queued
records to the partner server, killed with SIGKILL mid-delivery and started again:
every record arrives exactly once (counted by identifier at the partner), none lost.

Slow by the partner's nature: its in-memory store searches by identifier by scanning,
so each conditional write costs more as the partner fills (about 1 s at 500 records on
a busy 2-core machine): 200 records (the cost grows with their square) keep it to a
minute or two, most of it the partner's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from gateway.delivery import Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer

from .conftest import ORDERS, bundle

RECORDS = 200
PATIENTS = 20  # 10 orders each: order kept per patient
# `gateway serve` itself, with the demo partner njmu2 served by the test's partner
# server (the operator's override file in GATEWAY_HOME, written by _serve).
SERVE = """
import sys
from gateway.cli import main
sys.exit(main(["--home", {home!r}, "serve", "--port", "{port}"]))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(home: Path, base: str, log: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GATEWAY_DELIVERY_POLL_SECONDS": "0.05",
        "GATEWAY_DELIVERY_BACKOFF_BASE": "0.1",
        "GATEWAY_DELIVERY_BACKOFF_CAP": "0.5",
        "GATEWAY_DELIVERY_READ_TIMEOUT": "10",
        "GATEWAY_DELIVERY_WRITE_TIMEOUT": "10",
        "GATEWAY_DELIVERY_LEASE_SECONDS": "12",  # over the timeouts: a killed row is asked soon
        "GATEWAY_DELIVERY_MAX_ATTEMPTS": "100",
        "GATEWAY_LOG_LEVEL": "info",
    }
    (home / "partners.yaml").write_text(
        f"partners:\n  njmu2:\n    base: {base}\n    max_entries: 8\n", encoding="utf-8"
    )
    code = SERVE.format(home=str(home), port=_port())
    with (home / log).open("wb") as errors:  # the gateway's log, to read when it fails
        return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stderr=errors)


def _states(store: Store) -> Counter[str]:
    return Counter(r.state for r in Outbox(store).records(limit=RECORDS + 10))


def test_sigkill_mid_delivery_then_restart_delivers_each_record_once(
    partner: PartnerServer, tmp_path: Path
) -> None:
    partner.reset()
    store = Store.for_home(tmp_path)
    outbox = Outbox(store)
    target = Partner("njmu2", partner.base, 8)
    for n in range(RECORDS):
        outbox.enqueue(target, bundle(f"P{n % PATIENTS}", f"O{n}"))
    first = _serve(tmp_path, partner.base, "first.log")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # a fifth delivered, one being sent: kill
            states = _states(store)
            if states["delivered"] >= RECORDS // 5 and states["sending"]:
                break
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    killed = _states(store)
    assert 0 < killed["delivered"] < RECORDS and killed["sending"] == 1, killed
    [cut] = [r.id for r in Outbox(store).records(state="sending")]
    second = _serve(tmp_path, partner.base, "second.log")
    try:
        deadline = time.monotonic() + 900
        while _states(store)["delivered"] < RECORDS and time.monotonic() < deadline:
            time.sleep(0.2)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0
    finally:
        second.kill()
    assert _states(store) == {"delivered": RECORDS}
    # The record cut mid-send was not sent blindly again: the partner was asked first.
    reasons = [e.reason for e in Outbox(store).events(cut)]
    assert any(r.startswith("delivery.interrupted") for r in reasons), reasons
    assert any(r.startswith("asked: ") for r in reasons), reasons
    # Exactly once at the partner: every order's identifier once, every patient once.
    answer = partner.http.get("/ServiceRequest", params={"_count": "1000"}).json()
    idents = Counter(
        i["value"]
        for e in answer.get("entry", [])
        for i in e["resource"]["identifier"]
        if i["system"] == ORDERS
    )
    assert len(idents) == RECORDS and set(idents.values()) == {1}
    assert partner.count()["Patient"] == PATIENTS
    store.close()
