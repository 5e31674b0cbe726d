"""Refused credentials against the real partner server (its bearer-token option): a
wrong token is answered 401, the record is held with the reason, nothing is lost; the
token fixed and the record released, it is delivered once."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Auth, Partner
from gateway.store import Store
from tests.partner.conftest import PARTNER_DIR, PartnerServer, _cache_home, _free_port

from .conftest import MRN, ORDERS, bundle

TOKEN = "partner-token-2026"  # the partner's static token (test only)
FAST = DeliveryConfig(backoff_base=0.05, backoff_cap=0.2, breaker_threshold=50)


@pytest.fixture(scope="module")
def guarded(partner: PartnerServer) -> Iterator[PartnerServer]:
    """A second partner instance that needs ``Authorization: Bearer TOKEN`` (``partner``
    first: it skips, saying why, where the server cannot run)."""
    port = _free_port()
    env = {
        **os.environ,
        "PARTNER_FHIR_HOME": str(_cache_home()),
        "PARTNER_FHIR_PORT": str(port),
        "PARTNER_FHIR_TOKEN": TOKEN,
        "PARTNER_FHIR_FAIL": "none",
    }
    started = subprocess.run(
        [str(PARTNER_DIR / "start")], env=env, capture_output=True, text=True, timeout=900
    )
    if started.returncode != 0:
        pytest.fail(f"partner-fhir did not start:\n{started.stdout}\n{started.stderr}")
    server = PartnerServer(f"http://127.0.0.1:{port}/fhir/R4")
    server.http.headers["Authorization"] = f"Bearer {TOKEN}"
    try:
        yield server
    finally:
        server.http.close()
        subprocess.run([str(PARTNER_DIR / "stop")], env=env, capture_output=True, timeout=60)


def test_a_refused_token_holds_the_record_then_release_delivers_it(
    guarded: PartnerServer, tmp_path: Path
) -> None:
    guarded.reset()
    token_file = tmp_path / "hkpmc.token"
    token_file.write_text("an-expired-token\n", encoding="utf-8")
    token_file.chmod(0o600)  # a secret: owner-only, or it is refused
    hkpmc = Partner("hkpmc", guarded.base, auth=Auth(type="bearer", token_file=token_file))
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    row, _ = outbox.enqueue(hkpmc, bundle("P1", "O1", name="許志明"))
    with Deliverer(outbox, {"hkpmc": hkpmc}, FAST, rng=random.Random(3)) as deliverer:
        deliverer.run_once()
        held = outbox.require(row)
        assert (held.state, held.last_status) == ("held", 401)
        assert held.last_error == "delivery.credentials-refused"
        assert "OperationOutcome" in (held.last_response or "")
        assert "partner hkpmc refused the gateway's credentials (HTTP 401)" in (
            outbox.events(row)[-1].reason
        )
        for _ in range(3):  # nothing more is sent, and the record never dies
            deliverer.run_once()
        assert outbox.require(row).state == "held" and guarded.count() == {}
        token_file.write_text(f"{TOKEN}\n", encoding="utf-8")  # the operator fixes it
        outbox.release(row, "partner token renewed")
        deliverer.run_once()
    assert outbox.require(row).state == "delivered"
    assert len(guarded.search(f"Patient?identifier={MRN}|P1")) == 1
    assert len(guarded.search(f"ServiceRequest?identifier={ORDERS}|O1")) == 1
    store.close()


def test_the_guarded_partner_refuses_without_the_token(guarded: PartnerServer) -> None:
    answer = httpx.post(guarded.base, json=bundle("P2", "O2"), timeout=30)
    assert answer.status_code == 401  # the premise: the partner checks the token
