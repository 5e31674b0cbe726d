"""Audit fixtures: an empty store per test on each backend (SQLite; PostgreSQL when
GATEWAY_TEST_DATABASE_URL is set), the demo PKI once per session (the gateway's tree
heads are signed with Nansha Central Hospital's key: the gateway runs there), and a
helper that fills a log with the events of a few transfers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gateway.audit import AuditLog, Subject, events
from gateway.datafiles import data_dir
from gateway.signing import Signer, make_demo_pki
from gateway.store import Store

from ..store.dbs import BACKENDS, opened_store

START = datetime(2026, 6, 10, 8, 0, tzinfo=UTC)
PATIENTS = ("Patient/3f0c9a43-wang-wei", "Patient/8d1e77b0-chan-tai-man", "Patient/c2a4-li-na")
AGREEMENT = "粤港澳大湾区个人信息跨境流动标准合同 NSCH-HKPMC-2026"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from opened_store(request.param, tmp_path)


@pytest.fixture
def log(store: Store) -> AuditLog:
    return AuditLog(store)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    make_demo_pki(data_dir("seeds") / "network.yaml", out)
    return out


@pytest.fixture(scope="session")
def signer(pki: Path) -> Signer:
    return Signer.load(pki / "nsch" / "key.pem", pki / "nsch" / "cert.pem")


def transfer_events(n: int, start: datetime = START) -> list[dict[str, Any]]:
    """``n`` events cycling through the kinds of one referral's journey, for three
    patients and two partners."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        patient = PATIENTS[i % len(PATIENTS)]
        record = Subject(patient, (f"Bundle/bundle-{i // 4}",))
        when = start + timedelta(minutes=i)
        partner = "HKPMC" if i % 2 == 0 else "NJMU2"
        step = i % 4
        if step == 0:
            out.append(events.received("NSCH", record, peer="10.8.0.21:40112", when=when))
        elif step == 1:
            out.append(events.converted(record, when=when))
        elif step == 2:
            out.append(
                events.policy_decision(
                    "NSCH",
                    partner,
                    "allow",
                    record,
                    basis="gba-standard-contract",
                    agreement=AGREEMENT,
                    purpose="referral",
                    when=when,
                )
            )
        else:
            out.append(
                events.delivery(
                    partner,
                    record,
                    url=f"https://fhir.{partner.lower()}.example.hk/fhir",
                    outcome="success",
                    basis="gba-standard-contract",
                    agreement=AGREEMENT,
                    purpose="referral",
                    status=200,
                    when=when,
                )
            )
    return out
