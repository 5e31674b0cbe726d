"""Adversarial review of POST /fhir on PostgreSQL (and SQLite): two different Bundles
of one partner carrying the same referral at the same time store it once. Each
Bundle's conditions (the Patient's ``ifNoneExist``, the ServiceRequest's ``PUT
?identifier=``) were looked up in its own transaction: on PostgreSQL (READ COMMITTED)
both found nothing and both created, two resources under one identifier (and every
later condition on it a 412), two referral Tasks. SQLite serialises write
transactions (BEGIN IMMEDIATE); PostgreSQL now takes a transaction-scoped advisory
lock per condition before the look-up (gateway/inbound/_locks.py)."""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.inbound import Inbound, PartnerAuth, Resources, resources
from gateway.signing import sign_bundle
from gateway.store import open_store
from tests.store.dbs import BACKENDS, database

from .conftest import NSCH_TOKEN, make_home, signer

HOLD = 5.0  # how long the first look-up waits for the second (only after the fix)


@pytest.fixture(params=BACKENDS)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path, pki: Path) -> Iterator[Settings]:
    for url in database(request.param, tmp_path):
        settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN})
        toml = settings.home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        yield Settings.load(home=settings.home, env={})


def _as_sent(referral: dict[str, Any], pki: Path, n: int) -> bytes:
    """The referral in a Bundle of its own (another identifier: not a resend)."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"NSCH-RACE-{n}"
    return orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))


def _current(settings: Settings, resource_type: str) -> int:
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            c = resources.c
            query = sa.select(sa.func.count()).where(
                c.resource_type == resource_type, c.current.is_(True)
            )
            return int(conn.execute(query).scalar_one())
    finally:
        store.close()


def test_two_bundles_racing_on_one_condition_store_one_resource(
    db_settings: Settings, referral: dict[str, Any], pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each request's look-up of its conditions waits (at most HOLD seconds) for the
    # other's: without a lock both look before either commits (the interleaving that
    # stored two copies); with it the second cannot look before the first commits, so
    # the first goes on after HOLD and the second finds what it stored.
    looked = threading.Barrier(2, timeout=HOLD)
    lookup = Resources.find_identifiers

    def look_together(self: Resources, *args: Any, **kwargs: Any) -> Any:
        found = lookup(self, *args, **kwargs)
        # broken: the other request could not look meanwhile, it waits for this one
        with contextlib.suppress(threading.BrokenBarrierError):
            looked.wait()
        return found

    monkeypatch.setattr(Resources, "find_identifiers", look_together)
    bodies = [_as_sent(referral, pki, n) for n in (1, 2)]
    store = open_store(db_settings)
    inbound = Inbound(db_settings, store)
    answers: list[Any] = []
    try:

        def send(body: bytes) -> None:
            answers.append(inbound.receive(body, PartnerAuth("nsch", "bearer")))

        threads = [threading.Thread(target=send, args=(b,)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        store.close()
    assert sorted(a.status for a in answers) == [200, 200], [a.body for a in answers]
    # the conditional creates (Patient, two Practitioners) and update (ServiceRequest)
    assert _current(db_settings, "Patient") == 1
    assert _current(db_settings, "Practitioner") == 2
    assert _current(db_settings, "ServiceRequest") == 1
    assert _current(db_settings, "Task") == 1  # one referral, one Task
