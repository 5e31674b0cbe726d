"""Delivery inside ``gateway serve`` (DeliveryService), against the partner server: a
message converted while it runs and one converted before it started are both
delivered; stopping it mid-send lets the worker finish that record (no row left
``sending`` under a lease)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway import Converter, Settings
from gateway.delivery import DeliveryService, Outbound
from gateway.errors import ConfigError
from gateway.partners import Partner
from gateway.processing import process_message
from gateway.store import Incoming, Store, open_store
from tests.conftest import REPO
from tests.partner.conftest import PartnerServer

HL7 = REPO / "examples" / "hl7v2"


def _until(check: Callable[[], bool], seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def _service(partner: PartnerServer, tmp_path: Path) -> tuple[Settings, Store, DeliveryService]:
    settings = dataclasses.replace(
        Settings.load(home=tmp_path, env={}),
        delivery_poll_seconds=0.05,
        delivery_backoff_base=0.05,
        delivery_backoff_cap=0.2,
    )
    store = open_store(settings)
    served = {k: Partner(k, partner.base, max_entries=8) for k in ("njmu2", "nsch")}
    outbound = Outbound(settings, store, partners=served)
    return settings, store, DeliveryService(settings, store, outbound=outbound, feed_every=0.2)


def _receive(store: Store, converter: Converter, name: str) -> int:
    receipt = store.receive(Incoming((HL7 / name).read_bytes(), "mllp"))
    process_message(store, converter, receipt.id)  # as the listeners do, after the ACK
    return receipt.id


def test_converted_messages_are_delivered_by_the_running_service(
    partner: PartnerServer, tmp_path: Path, converter: Converter
) -> None:
    partner.reset()
    _, store, service = _service(partner, tmp_path)
    before = _receive(store, converter, "ref_i12_nsgp_to_nsch.hl7")  # converted, not routed
    service.start()
    try:
        during = _receive(store, converter, "ref_i12_lax2_to_njmu2.hl7")
        assert _until(lambda: store.state_of(during) == store.state_of(before) == "delivered"), (
            store.state_of(before),
            store.state_of(during),
        )
    finally:
        service.stop()
    count = partner.count()
    assert count["ServiceRequest"] == 2
    store.close()


def test_stop_mid_send_finishes_the_record_and_leaves_no_lease(
    partner: PartnerServer, tmp_path: Path, converter: Converter
) -> None:
    partner.reset()
    _, store, service = _service(partner, tmp_path)
    # Two slow writes: the overwrite check's batch (a POST too), then the send itself.
    partner.http.post("/$fault", json={"mode": "slow:1.5", "count": 2}).raise_for_status()
    service.start()
    try:
        message = _receive(store, converter, "ref_i12_lax2_to_njmu2.hl7")
        outbox = service.outbound.outbox
        assert _until(lambda: any(r.state == "sending" for r in outbox.for_message(message)))
    finally:
        service.stop()
    [row] = service.outbound.outbox.for_message(message)
    assert (row.state, store.state_of(message)) == ("delivered", "delivered")
    assert [r for r in service.outbound.outbox.records() if r.state == "sending"] == []
    store.close()


def test_the_sweep_interval_is_a_setting(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={"GATEWAY_DELIVERY_SWEEP_SECONDS": "7.5"})
    store = open_store(settings)
    try:
        assert DeliveryService(settings, store).feed_every == 7.5
        default = Settings.load(home=tmp_path / "other", env={})
        assert DeliveryService(default, store).feed_every == 30.0
    finally:
        store.close()
    with pytest.raises(ConfigError, match="delivery_sweep_seconds must be positive"):
        Settings.load(home=tmp_path, env={"GATEWAY_DELIVERY_SWEEP_SECONDS": "0"})
