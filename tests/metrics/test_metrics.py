"""``GET /metrics`` scraped as Prometheus does: every metric of docs/metrics.md is there,
and the counts, queue figures and stage latencies move when records go through (one
delivered to the partner FHIR server, one that fails to convert)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.datafiles import data_dir
from gateway.delivery import DeliveryService, Outbound
from gateway.metrics import _store as store_metrics
from gateway.partners import Partner
from gateway.processing import process_message
from gateway.signing import make_demo_pki
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.metrics.documented import documented, family_name
from tests.partner.conftest import PartnerServer, partner  # noqa: F401
from tests.store.dbs import BACKENDS, database

HL7 = REPO / "examples" / "hl7v2"
ROUTED = "ref_i12_lax2_to_njmu2.hl7"  # routed to njmu2 (seeds/routes.yaml)
PARTNER = "njmu2"
CONVERTER_STAGES = ("intake", "mapping", "validation", "serialise")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(app: FastAPI) -> tuple[set[str], Samples]:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            return await http.get("/metrics")

    answer = asyncio.run(go())
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    families, samples = set(), {}
    for family in text_string_to_metric_families(answer.text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def _until(check: Callable[[], bool], seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _receive(store: Store, converter: Converter, raw: bytes) -> int:
    receipt = store.receive(Incoming(raw, "mllp"))
    process_message(store, converter, receipt.id)  # as the listeners do, after the ACK
    return receipt.id


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every scrape reads the store again (not the shared reading of MIN_INTERVAL)."""
    monkeypatch.setattr(store_metrics, "MIN_INTERVAL", 0.0)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database(request.param, tmp_path)


@pytest.mark.usefixtures("fresh")
def test_every_documented_metric_is_scraped_and_moves(
    partner: PartnerServer,  # noqa: F811
    tmp_path: Path,
    converter: Converter,
    database_url: str,
) -> None:
    partner.reset()
    keys = tmp_path / "keys"
    make_demo_pki(data_dir("seeds") / "network.yaml", keys)
    _exposed_p12(keys, "nsch", keys / "exposed")  # the watch reports it, not its date
    settings = dataclasses.replace(
        Settings.load(home=tmp_path / "home", env={}),
        database_url=database_url,
        signing_keys=keys,
        delivery_poll_seconds=0.05,
        delivery_backoff_base=0.05,
        delivery_backoff_cap=0.2,
    )
    store = open_store(settings)
    served = {k: Partner(k, partner.base, max_entries=8) for k in ("njmu2", "nsch")}
    outbound = Outbound(settings, store, partners=served)
    service = DeliveryService(settings, store, outbound=outbound, feed_every=0.2)
    app = create_app(settings, converter, TokenSet(["t" * 24]))
    _, before = scrape(app)

    good = _receive(store, converter, (HL7 / ROUTED).read_bytes())
    raw = (HL7 / ROUTED).read_bytes()
    no_pid = b"\r".join(s for s in raw.split(b"\r") if not s.startswith(b"PID"))
    bad = _receive(store, converter, no_pid)  # mapping.no-identity
    assert store.state_of(bad) == "failed"
    outbound.process(good)  # queued for the partner, not sent yet: no worker runs
    _, queued = scrape(app)
    assert total(queued, "gateway_queue_depth", partner=PARTNER) >= 1
    assert total(queued, "gateway_queue_oldest_age_seconds", partner=PARTNER) > 0
    assert total(queued, "gateway_records_total", partner=PARTNER, outcome="queued") == 1

    service.start()
    try:
        assert _until(lambda: store.state_of(good) == "delivered"), store.state_of(good)
    finally:
        service.stop()
    families, after = scrape(app)

    table = documented()  # each row of docs/metrics.md, and nothing undocumented
    assert families == {family_name(name, kind) for name, (kind, _) in table.items()}
    for name, (kind, labels) in table.items():
        assert family_name(name, kind) in families, name
        names = {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
        series = [ls for (n, ls) in after if n in names]
        assert series, f"{name} has no series"
        assert all({k for k, _ in ls} - {"le"} == set(labels) for ls in series), name

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("gateway_messages_received_total", channel="mllp") == 2
    assert moved("gateway_conversions_total", outcome="converted") == 1
    assert moved("gateway_conversions_total", outcome="failed") == 1
    assert moved("gateway_messages", state="delivered") == 1
    assert moved("gateway_messages", state="failed") == 1
    assert moved("gateway_records_total", partner=PARTNER, outcome="queued") == 1
    assert moved("gateway_records_total", partner=PARTNER, outcome="delivered") == 1
    assert total(queued, "gateway_outbox_records", partner=PARTNER, state="pending") == 1
    assert total(after, "gateway_outbox_records", partner=PARTNER) == 0  # none open
    assert moved("gateway_delivery_attempts_total", partner=PARTNER, outcome="delivered") == 1
    assert total(after, "gateway_queue_depth", partner=PARTNER) == 0  # drained
    assert total(after, "gateway_queue_oldest_age_seconds", partner=PARTNER) == 0
    for stage in (*CONVERTER_STAGES, "process", "deliver", "queue"):
        assert moved("gateway_stage_duration_seconds_count", stage=stage) >= 1, stage
        assert moved("gateway_stage_duration_seconds_sum", stage=stage) > 0, stage
    assert total(after, "gateway_store_up") == 1
    assert total(after, "gateway_store_scrape_duration_seconds") > 0
    # The certificates' dates as the key files hold them (the demo PKI's institutions).
    for folder in ("nsch", "njmu2"):
        leaf = x509.load_pem_x509_certificates((keys / folder / "cert.pem").read_bytes())[0]
        found = total(
            after,
            "gateway_certificate_not_after_timestamp_seconds",
            source="signing",
            key=folder,
            position="leaf",
        )
        assert found == leaf.not_valid_after_utc.timestamp()
    unreadable = {"source": "signing", "key": "exposed", "code": "signing.key"}
    assert total(after, "gateway_certificate_unreadable", **unreadable) == 1
    assert total(after, "gateway_certificate_not_after_timestamp_seconds", key="exposed") == 0
    store.close()


def _exposed_p12(keys: Path, folder: str, out: Path) -> None:
    """``out/key.p12``: the demo key folder's key and chain as PKCS#12, readable by all."""
    key = serialization.load_pem_private_key((keys / folder / "key.pem").read_bytes(), None)
    chain = x509.load_pem_x509_certificates((keys / folder / "cert.pem").read_bytes())
    out.mkdir()
    (out / "key.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"exposed",
            key,  # type: ignore[arg-type]
            chain[0],
            chain[1:],
            serialization.NoEncryption(),
        )
    )
    (out / "key.p12").chmod(0o644)


def test_scrapes_close_together_share_one_reading(tmp_path: Path, converter: Converter) -> None:
    """/metrics needs no token: a flood of scrapes reads the store once per MIN_INTERVAL."""
    settings = Settings.load(home=tmp_path, env={})
    store = open_store(settings)
    app = create_app(settings, converter, TokenSet(["t" * 24]))
    _, first = scrape(app)
    _receive(store, converter, (HL7 / ROUTED).read_bytes())
    _, second = scrape(app)  # within the interval: the same reading of the store
    for name in ("gateway_store_scrape_duration_seconds", "gateway_messages_received_total"):
        assert total(second, name) == total(first, name), name
    assert total(second, "gateway_messages_received_total") == 0
    assert total(second, "gateway_stage_duration_seconds_count", stage="process") > total(
        first, "gateway_stage_duration_seconds_count", stage="process"
    )  # latencies are the process's own, never held back
    store.close()


@pytest.mark.usefixtures("fresh")
def test_a_store_that_cannot_be_read_is_reported_not_failed(tmp_path: Path) -> None:
    """A database that is gone: the scrape answers, with gateway_store_up 0."""
    settings = dataclasses.replace(
        Settings.load(home=tmp_path, env={}),
        database_url=f"sqlite:///{tmp_path / 'missing' / 'nowhere.db'}",
    )
    app = create_app(settings, None, TokenSet(["t" * 24]))
    families, samples = scrape(app)
    assert total(samples, "gateway_store_up") == 0
    assert "gateway_messages_received" not in families
    assert "gateway_certificate_not_after_timestamp_seconds" in families
