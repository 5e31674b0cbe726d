"""Delivery fixtures: an outbox in an empty store on each database backend, a clock
the tests move, and small transaction Bundles of named patients; for the outbound
path, a gateway home, its own store and the Outbound over them."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx

from gateway import Converter, Settings
from gateway.delivery import Deliverer, DeliveryConfig, Outbound, Outbox
from gateway.partners import Partner
from gateway.processing import process_message
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.partner.conftest import partner  # noqa: F401  (the real partner server)
from tests.store.dbs import BACKENDS, opened_store

BASE = "https://fhir.hkpmc.example.hk/fhir/R4"
POST_URL = BASE + "/"  # httpx's base_url ends in "/": a POST to the base goes there
PARTNER = Partner("hkpmc", BASE)
MRN = "urn:oid:1.3.6.1.4.1.99999.1.1.2"
ORDERS = "https://fhir.lax2.example.cn/sid/accession"
# Fast, deterministic settings: backoff in seconds the fake clock skips over.
CONFIG = DeliveryConfig(
    backoff_base=1.0,
    backoff_cap=30.0,
    max_attempts=4,
    breaker_threshold=3,
    breaker_cooldown=60.0,
    max_age=timedelta(hours=1),
)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 5, 8, 0, 0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def bundle(
    patient: str, order: str, status: str = "active", name: str = "陳大文"
) -> dict[str, Any]:
    """A referral: the patient (created if none exists) and its ServiceRequest
    (conditional update), the way mappings/writes.yaml writes them."""
    pid = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, patient)}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:bundle-{order}-{status}"},
        "entry": [
            {
                "fullUrl": pid,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": MRN, "value": patient}],
                    "name": [{"text": name}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={MRN}|{patient}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{order}",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "identifier": [{"system": ORDERS, "value": order}],
                    "status": status,
                    "intent": "order",
                    "subject": {"reference": pid},
                },
                "request": {"method": "PUT", "url": f"ServiceRequest?identifier={ORDERS}|{order}"},
            },
        ],
    }


def response(*statuses: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [{"response": {"status": s}} for s in statuses],
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    yield from opened_store(request.param, tmp_path)


@pytest.fixture
def outbox(store: Store, clock: Clock) -> Outbox:
    return Outbox(store, clock)


@pytest.fixture
def partner_api() -> Iterator[respx.MockRouter]:
    """The partner answered by respx (single HTTP outcomes); nothing else reachable.
    The overwrite check before a record's first part (a batch of GET searches) finds
    nothing: what a test's own routes answer are the sends."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield answer_checks(router)


def answer_checks(router: respx.MockRouter) -> respx.MockRouter:
    """``router`` answering the overwrite check (docs/delivery.md) of any partner: its
    batch of GET searches finds nothing. Added first, so the test's own POST routes
    answer the sends only."""
    router.post(content__contains=b'"method":"GET"').mock(side_effect=nothing_held)
    return router


def nothing_held(request: httpx.Request) -> httpx.Response:
    """A partner's answer to a batch of searches: one empty searchset per search."""
    asked = orjson.loads(request.content)["entry"]
    empty = {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
    entries = [{"response": {"status": "200"}, "resource": empty} for _ in asked]
    return httpx.Response(
        200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries}
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deliverer(outbox: Outbox, clock: Clock) -> Iterator[Deliverer]:
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as d:
        yield d


# -- the outbound path: a home and the store it configures -----------------------------
@pytest.fixture
def home(tmp_path: Path) -> Settings:
    return Settings.load(home=tmp_path, env={})


@pytest.fixture
def home_store(home: Settings) -> Iterator[Store]:
    """The home's own store (SQLite in it). A module whose tests take ``store`` from the
    home names it so (``store = home_store``): then ``outbound`` is over it too."""
    opened = open_store(home)
    yield opened
    opened.close()


@pytest.fixture
def outbound(home: Settings, store: Store) -> Outbound:
    """The outbound path over the home and the test's ``store``: the one the test sees."""
    return Outbound(home, store)


def receive(store: Store, converter: Converter, name: str) -> int:
    """examples/<name> received and converted; its message id."""
    receipt = store.receive(Incoming((REPO / "examples" / name).read_bytes(), "cli"))
    assert process_message(store, converter, receipt.id).state == "converted"
    return receipt.id
