"""A running delivery service follows the partners' files (no restart): after
``gateway partners set hkpmc --url NEW`` the next record goes to the new base URL, over
a new pooled client (the old one closed); an edit that does not load keeps the
partners read before; and routing sends to a partner added meanwhile instead of saying
"no FHIR server configured"."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import respx

from gateway import Settings
from gateway.cli import main
from gateway.delivery import DeliveryService, Outbound, Outbox
from gateway.partners import Partner, set_partner
from gateway.store import Store, open_store
from tests.conftest import REPO
from tests.loglines import errors_of

from .conftest import BASE, answer_checks, bundle, response
from .test_routes_reload import HOLTER, TO_HONG_KONG

NEW = "https://fhir-new.hkpmc.example.hk/fhir/R4"


def _until(check: Callable[[], bool], seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.load(home=tmp_path, env={}),
        delivery_poll_seconds=0.05,
        delivery_backoff_base=0.05,
        delivery_backoff_cap=0.2,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[tuple[Store, DeliveryService]]:
    store = open_store(settings)
    made = DeliveryService(settings, store, feed_every=0.2)
    assert made.outbound.partners_watch is not None
    made.outbound.partners_watch.watch.reload_interval = 0  # look before every batch
    made.start()
    yield store, made
    made.stop()
    store.close()


def test_the_next_record_goes_to_the_base_url_set_while_the_worker_runs(
    service: tuple[Store, DeliveryService],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, running = service
    outbox = Outbox(store)
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        answer_checks(router)  # the overwrite check, at whichever base it is asked
        old = router.post(BASE + "/").respond(200, json=response("201", "201"))
        new = router.post(NEW + "/").respond(200, json=response("201", "201"))

        def send(patient: str) -> int:
            hkpmc = running.outbound.partners["hkpmc"]
            row = outbox.enqueue(hkpmc, bundle(patient, f"O-{patient}"))[0]
            assert _until(lambda: outbox.require(row).state == "delivered"), outbox.events(row)
            return row

        send("P1")
        assert (old.call_count, new.call_count) == (1, 0)
        before = running.deliverer._clients["hkpmc"]

        assert main(["--home", str(tmp_path), "partners", "set", "hkpmc", "--url", NEW]) == 0
        capsys.readouterr()
        asked = len(router.calls)
        send("P2")
        assert (old.call_count, new.call_count) == (1, 1)
        # Every request since (the overwrite check too) went to the new base.
        hosts = {c.request.url.host for c in list(router.calls)[asked:]}
        assert hosts == {"fhir-new.hkpmc.example.hk"}
        assert before.is_closed and running.deliverer._clients["hkpmc"] is not before

        # A partners file that does not load: the worker goes on with the last good one.
        override = tmp_path / "partners.yaml"
        good = override.read_text(encoding="utf-8")
        with errors_of("gateway.partners") as lines:
            # written whole and renamed over (as `partners set` does): a watcher looking
            # between write_text's truncation and its write would see two edits
            broken = override.with_name("partners.yaml.new")
            broken.write_text(good + "  nsch: [\n", encoding="utf-8")
            broken.replace(override)
            send("P3")
        assert (old.call_count, new.call_count) == (1, 2)
        [line] = [text for text in lines if "partners changed" in text]
        assert str(override) in line and "[config.syntax]" in line


def test_routing_sends_to_a_partner_added_without_a_restart(
    settings: Settings, tmp_path: Path
) -> None:
    """Holter orders routed to Hong Kong's partner, then to 南沙's GP clinic (nsgp),
    which has no FHIR server configured: skipped, until `partners set` adds one."""
    net = tmp_path / "net"
    net.mkdir()
    network, routes = net / "network.yaml", net / "routes.yaml"
    network.write_bytes((REPO / "seeds" / "network.yaml").read_bytes())
    routes.write_text(
        (REPO / "seeds" / "routes.yaml").read_text(encoding="utf-8")
        + TO_HONG_KONG.replace("{to}", "NSGP"),
        encoding="utf-8",
    )
    settings = dataclasses.replace(settings, network=network, delivery_routes=routes)
    store = open_store(settings)
    try:
        outbound = Outbound(settings, store)
        assert outbound.partners_watch is not None
        outbound.watch.reload_interval = outbound.partners_watch.watch.reload_interval = 0
        routing = outbound.route(HOLTER)
        assert list(routing.partners) == []
        assert routing.skipped == [
            ("nsgp", "rule holter-to-hong-kong: no FHIR server configured (partners)")
        ]
        set_partner(settings, "nsgp", {"base": "https://fhir.nsgp.example.cn/fhir"})
        routing = outbound.route(HOLTER)
        assert list(routing.partners) == ["nsgp"] and routing.skipped == []
        assert outbound.partners["nsgp"].base == "https://fhir.nsgp.example.cn/fhir"
    finally:
        store.close()


def test_a_record_held_for_a_partner_not_configured_goes_once_it_is_added(
    service: tuple[Store, DeliveryService], settings: Settings
) -> None:
    """A record queued for 南沙's GP clinic (nsgp) before it had a FHIR server in the
    partners' files is held (delivery.unknown-partner); `partners set` adds one while the
    worker runs, and the record goes without anyone releasing it."""
    store, _ = service
    outbox = Outbox(store)
    nsgp = "https://fhir.nsgp.example.cn/fhir"
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        answer_checks(router)
        post = router.post(nsgp + "/").respond(200, json=response("201", "201"))
        row = outbox.enqueue(Partner("nsgp", nsgp), bundle("P1", "O-P1"))[0]
        assert _until(lambda: outbox.require(row).state == "held"), outbox.events(row)
        assert outbox.require(row).last_error == "delivery.unknown-partner"
        set_partner(settings, "nsgp", {"base": nsgp})
        assert _until(lambda: outbox.require(row).state == "delivered"), outbox.events(row)
    assert post.call_count == 1
    moves = [(e.from_state, e.to_state) for e in outbox.events(row)]
    assert moves[1:3] == [("pending", "held"), ("held", "pending")]
