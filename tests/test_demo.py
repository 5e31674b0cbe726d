"""``make demo`` section 4, the gateway path (gateway/demo_gateway.py): two gateways in
one process on loopback, the Nansha referral sent to Hong Kong. What a user would check
is read from the gateways' own stores and logs, not from the lines printed."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.audit import AuditLog, default_checker, verify_live
from gateway.delivery import Outbox
from gateway.demo_gateway import GatewayPath, run_gateway_path
from gateway.inbound import Referrals, bundles
from gateway.signing import trust_store, verify_bundle
from gateway.store import Store, open_store

REFERRAL = "https://fhir.nsch.example.cn/sid/referral|REF20260618001"
STEPS = [
    "demo PKI (gateway keys init)",
    "home NSCH",
    "home HKPMC",
    "APIs on loopback",
    "consent import at A",
    "A stores and converts",
    "routed",
    "cross-border policy",
    "signed (JWS, detached)",
    "A delivers to B (hkpmc)",
    "B verifies the signature",
    "B receives the referral",
    "B accepts",
    "A shows the referral's status",
    "audit log NSCH verified",
    "audit log HKPMC verified",
]
# The patient of the referral: never in the lines (nor the consent's HKID).
PATIENT = ("許", "嘉瑋", "HUI", "KA WAI", "K583726A", "0098765")


@dataclass
class Ran:
    code: int
    path: GatewayPath
    printed: str
    threads_before: set[threading.Thread]


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    before = set(threading.enumerate())
    out = io.StringIO()
    code, path = run_gateway_path(tmp_path_factory.mktemp("demo") / "gateway", out)
    return Ran(code, path, out.getvalue(), before)


@pytest.fixture
def store_of(ran: Ran) -> Iterator[dict[str, Store]]:
    opened = {gw.key: open_store(Settings.load(gw.home, env={})) for gw in (ran.path.a, ran.path.b)}
    yield opened
    for store in opened.values():
        store.close()


def test_every_step_is_one_ok_line(ran: Ran) -> None:
    assert ran.code == 0, ran.printed
    lines = ran.printed.splitlines()
    assert [line[8:42].rstrip() for line in lines] == STEPS
    assert all(line.startswith("  ok    ") for line in lines)
    assert not [p for p in PATIENT if p in ran.printed]


def test_b_holds_the_referral_signed_and_verified(ran: Ran, store_of: dict[str, Store]) -> None:
    b = store_of["hkpmc"]
    with b.engine.connect() as conn:
        applied = conn.execute(
            sa.select(bundles.c.raw).where(
                bundles.c.partner == "nsch", bundles.c.state == "applied"
            )
        ).all()
    assert len(applied) == 1
    # B's copy, as received, verifies against the demo network's CA (B's trust store).
    settings = Settings.load(ran.path.b.home, env={})
    report = verify_bundle(orjson.loads(applied[0].raw), trust_store(settings), "at B")
    assert report.ok, [c.message for c in report.failures()]
    assert "Nansha" in report.signatures[0].institution
    # B checked it itself on receipt: its audit log says so.
    kinds = [
        ([c["code"] for c in e.resource().get("subtype", [])], e.resource().get("outcome"))
        for e in AuditLog(b).rows()
    ]
    assert (["verify", "signature-verified"], "0") in kinds
    # ... and keeps the referral, accepted.
    [received] = Referrals(settings, b).list(direction="received")
    assert (received.partner, received.referral, received.status) == ("nsch", REFERRAL, "accepted")


def test_a_delivered_the_signed_referral_and_shows_it_accepted(
    ran: Ran, store_of: dict[str, Store]
) -> None:
    a = store_of["nsch"]
    rows = Outbox(a).records()
    assert [(r.partner, r.state) for r in rows] == [("hkpmc", "delivered")]
    settings = Settings.load(ran.path.a.home, env={})
    [sent] = Referrals(settings, a).list(direction="sent")
    assert (sent.partner, sent.referral, sent.status) == ("hkpmc", REFERRAL, "accepted")
    # The file the closing lines name for `gateway verify`
    assert verify_bundle(orjson.loads(ran.path.signed.read_bytes()), trust_store(settings)).ok
    assert f"verify {ran.path.signed}" in ran.path.closing()


def test_both_audit_logs_verify_and_the_lines_give_their_size(
    ran: Ran, store_of: dict[str, Store]
) -> None:
    for gw in (ran.path.a, ran.path.b):
        settings = Settings.load(gw.home, env={})
        verdict = verify_live(AuditLog(store_of[gw.key]), default_checker(settings))
        assert verdict.ok, [p.line() for p in verdict.problems]
        assert verdict.entries > 3
        assert f"audit log {gw.key.upper()} verified" in ran.printed
        assert f"tree size {verdict.entries}:" in ran.printed


def test_nothing_is_left_running(ran: Ran) -> None:
    left = set(threading.enumerate()) - ran.threads_before
    assert not [t for t in left if t.name.startswith("demo-api") or not t.daemon]
    for gw in (ran.path.a, ran.path.b):  # both ports closed
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", gw.port))


def test_a_second_run_is_fresh_and_ignores_the_callers_gateway_settings(
    ran: Ran, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller's GATEWAY_* (make demo's environment, a CI job's database) are not the
    # two gateways': each keeps SQLite in its home.
    monkeypatch.setenv("GATEWAY_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    monkeypatch.setenv("GATEWAY_INSTITUTION", "lax2")
    out = io.StringIO()
    code, path = run_gateway_path(ran.path.root, out)
    assert code == 0, out.getvalue()
    store = Store.open(f"sqlite:///{path.a.home / 'gateway.db'}")
    try:
        assert len(Outbox(store).records()) == 1  # the first run's store is gone
    finally:
        store.close()


def test_a_step_that_fails_is_one_error_line_and_a_non_zero_code(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder", encoding="utf-8")
    before = set(threading.enumerate())
    out = io.StringIO()
    code, _ = run_gateway_path(tmp_path / "file" / "gateway", out)
    assert code == 1
    [line] = out.getvalue().splitlines()
    assert line.startswith("  error fresh folder") and "Not a directory" in line
    assert not [t for t in set(threading.enumerate()) - before if not t.daemon]


def test_the_agreements_the_demo_relies_on_stay_in_force_for_half_a_year() -> None:
    """Section 4 and tests/e2e decide on today's date, so a seed agreement that ends
    makes `make demo` (CI's first step) exit 1 that day: this fails half a year ahead,
    naming the agreement to renew in seeds/agreements.yaml. The one expired on purpose
    (NSGP ↔ HKPMC, the policy's refusal story) ended before the demo messages' day."""
    import datetime as dt

    import yaml

    from gateway.datafiles import data_dir

    data = yaml.safe_load((data_dir("seeds") / "agreements.yaml").read_text(encoding="utf-8"))
    demo_day, horizon = dt.date(2026, 6, 18), dt.date.today() + dt.timedelta(days=183)
    ending = [
        f"{a['id']} ends {a['valid']['to']}"
        for a in data["agreements"]
        if demo_day <= dt.date.fromisoformat(str(a["valid"]["to"])) < horizon
    ]
    assert not ending, f"renew in seeds/agreements.yaml (valid.to): {'; '.join(ending)}"
