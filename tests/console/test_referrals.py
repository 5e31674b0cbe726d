"""The referrals page: a referral received from a partner shows its Task's status, and
the listing is audited (referrals are about patients)."""

from __future__ import annotations

from gateway import Settings
from gateway.audit import AuditLog, events
from gateway.console import Users
from gateway.store import open_store
from tests.api.test_app import Client
from tests.inbound.conftest import (  # noqa: F401  (fixtures)
    NSCH_TOKEN,
    client,
    hk_settings,
    partner,
    pki,
    referral,
    signed_referral,
)

from .conftest import PASSWORD, browser, login


def test_a_received_referral_shows_its_task_and_the_view_is_audited(
    client: Client,  # noqa: F811
    hk_settings: Settings,  # noqa: F811
    signed_referral: bytes,  # noqa: F811
) -> None:
    sent = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert sent.status_code == 200
    store = open_store(hk_settings)
    try:
        Users(store).add("kwan", "operator", PASSWORD, lang="zh-Hant-HK")
    finally:
        store.close()
    page = login(browser(client.app), "kwan").get("/console/referrals")
    assert page.status_code == 200
    assert "收到的轉介" in page.text and "REF20260618001" in page.text
    assert "requested" in page.text and "nsch" in page.text
    store = open_store(hk_settings)
    try:
        last = next(iter(reversed(list(AuditLog(store).rows())))).resource()
    finally:
        store.close()
    assert events.keys_of(last)[0] == "api-read"
    shown = [e["what"].get("reference", "") for e in last["entity"]]
    assert any(ref.startswith("Task/") for ref in shown)
