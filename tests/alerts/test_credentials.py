"""credentials_refused: a partner refusing the gateway's credentials (401/403: held at
once) or no token to send (retried, then held) is heard of at the first record, not
30 minutes later by oldest_age. Rows are held by the real delivery worker against a
mocked partner (respx), as tests/delivery/test_worker.py holds them; the alert fires
once (whoever claims it), names the partner, the code and what to do, and resolves
once the rows are released and delivered."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx

from gateway.alerts import LANGUAGES, CheckResult, Notice, check, current, notifier_from
from gateway.config import Settings
from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Auth, Partner
from gateway.store import Store

from .conftest import MRN, PATIENT_MRN, PATIENT_NAME, T0, Hook, bundle

BASE = "https://fhir.hkpmc.example.hk/fhir/R4"
POST_URL = BASE + "/"
PARTNER = Partner("hkpmc", BASE)
CONFIG = DeliveryConfig(
    backoff_base=1.0,
    backoff_cap=30.0,
    max_attempts=3,
    breaker_threshold=5,
    breaker_cooldown=60.0,
    max_age=timedelta(hours=1),
)
REFUSED = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "login", "diagnostics": "Unauthorized"}],
}
DELIVERED = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [{"response": {"status": "201"}}, {"response": {"status": "201"}}],
}
TOKEN_ENV = "HKPMC_TOKEN_FOR_ALERT_TESTS"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def outbox(store: Store, clock: Clock) -> Outbox:
    return Outbox(store, clock)


@pytest.fixture
def partner_api() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host="127.0.0.1").pass_through()  # the real local webhook receiver
        yield router


def enqueue(outbox: Outbox, partner: Partner, n: int) -> int:
    row, _ = outbox.enqueue(
        partner, bundle(f"ORD{n}"), order_key=f"{MRN}|{PATIENT_MRN}-{n}", now=outbox.clock()
    )
    return row


def with_hook(settings: Settings, hook: Hook) -> Settings:
    return replace(settings, alert_webhook_url=hook.url)


def assert_no_patient_data(hook: Hook) -> None:
    for _, body in hook.received:
        text = json.dumps(body, ensure_ascii=False)
        for secret in (PATIENT_NAME, PATIENT_MRN, "ORD1", "ORD2", MRN):
            assert secret not in text


def kinds(notices: list[Notice]) -> list[tuple[str, str, str]]:
    return [(n.event, n.alert.kind, n.alert.severity) for n in notices]


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_credential_fires_at_once_and_resolves_when_released(
    status: int,
    store: Store,
    outbox: Outbox,
    clock: Clock,
    partner_api: respx.MockRouter,
    settings: Settings,
    hook: Hook,
) -> None:
    settings = with_hook(settings, hook)
    notifier = notifier_from(settings)
    post = partner_api.post(POST_URL)
    post.side_effect = [httpx.Response(status, json=REFUSED)] * 2 + [
        httpx.Response(200, json=DELIVERED)
    ] * 2
    rows = [enqueue(outbox, PARTNER, 1)]
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
        assert outbox.require(rows[0]).state == "held"

        # One minute later, not 30: oldest_age (15 min here) is far from firing.
        clock.advance(60)
        fired = check(store, settings, clock(), notifier)
        assert kinds(fired.notices) == [("firing", "credentials_refused", "critical")]
        alert = fired.notices[0].alert
        assert (alert.partner, alert.value, alert.threshold) == ("hkpmc", 1.0, 1.0)
        assert set(alert.texts) == set(LANGUAGES)
        for lang in LANGUAGES:
            text = alert.texts[lang]
            assert "delivery.credentials-refused" in text
            assert "gateway outbox release" in text and "gateway partners check hkpmc" in text
        assert "香港" in alert.texts["zh-Hant-HK"] and "令牌文件或证书" in alert.texts["zh-Hans"]
        assert "Fix the token file or certificate" in alert.texts["en"]
        assert alert.titles["en"].startswith("[FHIR gateway critical]")

        # A second record refused while it fires: counted, not notified again.
        rows.append(enqueue(outbox, PARTNER, 2))
        deliverer.run_once()
        clock.advance(60)
        again = check(store, settings, clock(), notifier)
        assert again.notices == []
        assert [(a.kind, a.value) for a in current(store, settings, clock())] == [
            ("credentials_refused", 2.0)
        ]

        # The token fixed, a person releases the rows: delivered, the alert resolves once.
        for row in rows:
            outbox.release(row, "token renewed")
        deliverer.run_once()
        assert [outbox.require(r).state for r in rows] == ["delivered", "delivered"]
    clock.advance(60)
    resolved = check(store, settings, clock(), notifier)
    assert kinds(resolved.notices) == [("resolved", "credentials_refused", "critical")]
    assert check(store, settings, clock() + timedelta(minutes=1), notifier).notices == []
    assert hook.events() == [
        ("firing", "hkpmc", "credentials_refused"),
        ("resolved", "hkpmc", "credentials_refused"),
    ]
    assert_no_patient_data(hook)


def test_a_released_row_no_longer_counts_even_before_it_is_sent(
    store: Store, outbox: Outbox, clock: Clock, partner_api: respx.MockRouter, settings: Settings
) -> None:
    partner_api.post(POST_URL).respond(401, json=REFUSED)
    row = enqueue(outbox, PARTNER, 1)
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
    assert [a.kind for a in check(store, settings, clock()).alerts] == ["credentials_refused"]
    outbox.release(row, "certificate renewed")  # pending again: the worker has it now
    result = check(store, settings, clock() + timedelta(seconds=30))
    assert [(n.event, n.alert.kind) for n in result.notices] == [
        ("resolved", "credentials_refused")
    ]


def test_no_token_fires_while_retrying_and_stays_one_alert_once_held(
    store: Store,
    outbox: Outbox,
    clock: Clock,
    partner_api: respx.MockRouter,
    settings: Settings,
    hook: Hook,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    settings = with_hook(settings, hook)
    notifier = notifier_from(settings)
    tokenless = Partner("hkpmc", BASE, auth=Auth(type="bearer", token_env=TOKEN_ENV))
    post = partner_api.post(POST_URL).respond(200, json=DELIVERED)
    row = enqueue(outbox, tokenless, 1)
    with Deliverer(outbox, {"hkpmc": tokenless}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
        assert outbox.require(row).state == "retrying"
        fired = check(store, settings, clock(), notifier)
        assert kinds(fired.notices) == [("firing", "credentials_refused", "critical")]
        assert all("delivery.token-file" in t for t in fired.notices[0].alert.texts.values())
        for _ in range(CONFIG.max_attempts * 3):  # retried, then held: one alert throughout
            clock.advance(CONFIG.breaker_cooldown + CONFIG.backoff_cap)
            deliverer.run_once()
            assert check(store, settings, clock(), notifier).notices == []
        record = outbox.require(row)
        assert record.state == "held" and record.last_error == "delivery.token-file"
        assert [a.kind for a in current(store, settings, clock())] == ["credentials_refused"]
        monkeypatch.setenv(TOKEN_ENV, "renewed-token")
        outbox.release(row, "token set")
        deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 1
    assert kinds(check(store, settings, clock(), notifier).notices) == [
        ("resolved", "credentials_refused", "critical")
    ]
    assert hook.events() == [
        ("firing", "hkpmc", "credentials_refused"),
        ("resolved", "hkpmc", "credentials_refused"),
    ]
    assert_no_patient_data(hook)


def test_switched_off_for_a_partner_it_does_not_fire(
    store: Store, outbox: Outbox, clock: Clock, partner_api: respx.MockRouter, home: Path
) -> None:
    (home / "alerts.yaml").write_text(
        "alerts:\n  partners:\n    hkpmc:\n      credentials_refused: off\n", encoding="utf-8"
    )
    settings = Settings.load(home, env={})
    partner_api.post(POST_URL).respond(403, json=REFUSED)
    enqueue(outbox, PARTNER, 1)
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
    assert check(store, settings, clock()).alerts == []


EVALUATORS = 4


def test_evaluators_at_once_notify_it_once(
    store_url: str,
    store: Store,
    outbox: Outbox,
    clock: Clock,
    partner_api: respx.MockRouter,
    settings: Settings,
    hook: Hook,
) -> None:
    """Four processes' evaluations at once: one compare-and-set wins, one webhook POST."""
    settings = with_hook(settings, hook)
    partner_api.post(POST_URL).respond(401, json=REFUSED)
    enqueue(outbox, PARTNER, 1)
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
    stores = [Store.open(store_url, upgrade=False) for _ in range(EVALUATORS)]
    notifier = notifier_from(settings)
    barrier = threading.Barrier(EVALUATORS)
    results: list[CheckResult] = []
    errors: list[BaseException] = []

    def run(evaluator: Store) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(check(evaluator, settings, clock(), notifier))
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        for opened in stores:
            opened.close()
    assert not errors, errors
    assert [kinds(r.notices) for r in results if r.notices] == [
        [("firing", "credentials_refused", "critical")]
    ]
    assert all([a.kind for a in r.alerts] == ["credentials_refused"] for r in results)
    assert hook.events() == [("firing", "hkpmc", "credentials_refused")]


def test_the_console_alerts_view_shows_it_in_the_users_language(
    clock: Clock, partner_api: respx.MockRouter, settings: Settings
) -> None:
    from gateway.api import TokenSet, create_app
    from gateway.console import Users
    from gateway.store import open_store
    from tests.console.conftest import PASSWORD, Browser, login

    store = open_store(settings)  # the home's own store: the one the console reads
    try:
        Users(store).add("olivia", "operator", PASSWORD)  # zh-Hans
        Users(store).add("audrey", "auditor", PASSWORD, lang="en")
        partner_api.post(POST_URL).respond(401, json=REFUSED)
        enqueue(Outbox(store, clock), PARTNER, 1)
        with Deliverer(
            Outbox(store, clock), {"hkpmc": PARTNER}, CONFIG, rng=random.Random(7)
        ) as deliverer:
            deliverer.run_once()
    finally:
        store.close()
    app = create_app(settings, tokens=TokenSet(["console-test-token-0123456789"]))
    browsers = [Browser(app), Browser(app)]
    try:
        page = login(browsers[0], "olivia").get("/console/alerts").text
        assert 'class="alert critical"' in page and "delivery.credentials-refused" in page
        assert "令牌文件或证书" in page and PATIENT_NAME not in page
        english = login(browsers[1], "audrey").get("/console/alerts").text
        assert "refuses the gateway&#39;s credentials" in english
        assert "gateway outbox release ID" in english
    finally:
        for opened in browsers:
            opened.close()
        app.state.messages.close()
        app.state.reports.shutdown()


def _blocked(store: Store, clock: Clock) -> dict[tuple[str, str], float]:
    from gateway.metrics._store import StoreCollector

    for family in StoreCollector(lambda: store, clock, min_interval=0).collect():
        if family.name == "gateway_outbox_credentials_blocked":
            return {(s.labels["partner"], s.labels["code"]): s.value for s in family.samples}
    raise AssertionError("no gateway_outbox_credentials_blocked")


def test_the_metric_prometheus_alerts_on_counts_the_same_rows(
    store: Store,
    outbox: Outbox,
    clock: Clock,
    partner_api: respx.MockRouter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gateway_outbox_credentials_blocked (deploy/prometheus-alerts.yaml,
    GatewayCredentialsRefused): per partner and code, 0 once released."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    partner_api.post(POST_URL).respond(401, json=REFUSED)
    partner_api.post("https://fhir.njmu2.example.cn/fhir/").respond(200, json=DELIVERED)
    tokenless = Partner(
        "njmu2", "https://fhir.njmu2.example.cn/fhir", auth=Auth(type="bearer", token_env=TOKEN_ENV)
    )
    refused = enqueue(outbox, PARTNER, 1)
    enqueue(outbox, tokenless, 2)
    partners = {"hkpmc": PARTNER, "njmu2": tokenless}
    with Deliverer(outbox, partners, CONFIG, rng=random.Random(7)) as deliverer:
        deliverer.run_once()
    seen = _blocked(store, clock)
    assert seen[("hkpmc", "delivery.credentials-refused")] == 1
    assert seen[("njmu2", "delivery.token-file")] == 1  # retrying: counted already
    assert seen[("hkpmc", "delivery.token-file")] == 0  # every code of every partner
    assert sum(seen.values()) == 2
    assert check_values(store, clock) == {"hkpmc": 1.0, "njmu2": 1.0}
    outbox.release(refused, "certificate renewed")
    assert _blocked(store, clock)[("hkpmc", "delivery.credentials-refused")] == 0


def check_values(store: Store, clock: Clock) -> dict[str, float]:
    from gateway.alerts import observe

    seen = observe(store, clock())
    return {p: v for (p, kind), v in seen.items() if kind == "credentials_refused"}
