"""The console over HTTP (in-process): sign-in and its limits, cookies, CSRF, roles,
searches that keep patient identifiers out of URLs, the audit of every view, and the
reprocess of a failed message after the mapping fix."""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

import pytest
from fastapi import FastAPI

from gateway import Settings
from gateway.api import TokenSet, create_app
from gateway.audit import AuditLog, events
from gateway.console import _data
from gateway.store import open_store
from tests.store.browse import fix_mapping

from .conftest import PASSWORD, TOKEN, browser, csrf_of, login

keys_of = events.keys_of


def _events(settings: Settings) -> list[dict[str, object]]:
    store = open_store(settings)
    try:
        return [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()


def test_pages_need_a_session(app: FastAPI) -> None:
    client = browser(app)
    for path in ("/console/dashboard", "/console/messages", "/console/messages/1"):
        answer = client.get(path)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"


def test_the_session_cookie_is_secure_httponly_and_strict(app: FastAPI) -> None:
    client = browser(app)
    csrf = csrf_of(client.get("/console/login").text)
    answer = client.post(
        "/console/login", data={"name": "olivia", "password": PASSWORD, "csrf": csrf}
    )
    cookie = next(
        c for c in answer.headers.get_list("set-cookie") if c.startswith("__Host-gw_console=")
    )
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    page = client.get("/console/dashboard")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_wrong_passwords_are_refused_then_rate_limited(app: FastAPI) -> None:
    client = browser(app)
    csrf = csrf_of(client.get("/console/login").text)
    for _ in range(5):
        answer = client.post(
            "/console/login", data={"name": "olivia", "password": "wrong one!", "csrf": csrf}
        )
        assert answer.status_code == 401
    right = client.post(
        "/console/login", data={"name": "olivia", "password": PASSWORD, "csrf": csrf}
    )
    assert right.status_code == 429  # blocked for the window, even with the right password


def test_a_post_without_the_csrf_token_is_refused(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    client = login(browser(app), "olivia")
    fix_mapping(settings)
    no_token = client.post(f"/console/messages/{failed}/reprocess", data={"reason": "fixed"})
    assert no_token.status_code == 403
    wrong = client.post(
        f"/console/messages/{failed}/reprocess", data={"reason": "fixed", "csrf": "forged"}
    )
    assert wrong.status_code == 403
    assert client.post("/console/messages", data={"control_id": "x"}).status_code == 403
    anonymous = browser(app)
    anonymous.get("/console/login")
    refused = anonymous.post("/console/login", data={"name": "olivia", "password": PASSWORD})
    assert refused.status_code == 403
    store = open_store(settings)
    try:
        assert store.state_of(failed) == "failed"  # nothing was done
    finally:
        store.close()


def test_an_auditor_sees_no_button_and_cannot_reprocess(app: FastAPI, home: tuple) -> None:
    failed = home[1]
    client = login(browser(app), "audrey")
    page = client.get(f"/console/messages/{failed}")
    assert page.status_code == 200
    assert 'data-action="reprocess"' not in page.text and "Read-only" in page.text
    answer = client.post(
        f"/console/messages/{failed}/reprocess",
        data={"reason": "try", "csrf": csrf_of(page.text)},
    )
    assert answer.status_code == 403
    assert client.get("/console/audit").status_code == 200  # the auditor's own page


def test_an_operator_has_no_auditor_page(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    assert client.get("/console/audit").status_code == 403


def test_search_by_patient_keeps_the_identifier_out_of_urls_and_logs(
    app: FastAPI, home: tuple, caplog: pytest.LogCaptureFixture
) -> None:
    settings, failed, _ = home
    client = login(browser(app), "olivia")
    store = open_store(settings)
    try:
        patient = store.get(failed).patients[0]  # type: ignore[union-attr]
    finally:
        store.close()
    value = patient.split("|")[-1]
    csrf = csrf_of(client.get("/console/messages").text)
    with caplog.at_level(logging.DEBUG):
        found = client.post("/console/messages", data={"patient": value, "csrf": csrf})
        assert found.status_code == 303
        where = found.headers["location"]
        assert value not in where and re.fullmatch(r"/console/messages\?q=[\w-]+", where)
        page = client.get(where)
    assert f'href="/console/messages/{failed}"' in page.text
    rows = re.findall(r'href="/console/messages/(\d+)"', page.text)
    assert set(rows) == {str(failed)}
    assert value not in caplog.text
    # the search is audited: who (the console user) and which messages it showed
    search = [e for e in _events(settings) if keys_of(e)[0] == "api-read"][-1]
    requestor = next(a for a in search["agent"] if a["requestor"])  # type: ignore[union-attr]
    assert requestor["who"]["identifier"]["value"] == "olivia"
    assert "search-type" in [s["code"] for s in search["subtype"]]  # type: ignore[attr-defined]


def test_a_failed_message_shows_its_field_and_reprocesses_after_the_fix(
    app: FastAPI, home: tuple
) -> None:
    settings, failed, _ = home
    client = login(browser(app), "olivia")
    page = client.get(f"/console/messages/{failed}")
    assert "mapping.unsupported-message" in page.text
    assert re.search(r'<td class="field">MSH-9[^<]*</td>', page.text), "the field that failed"
    assert re.search(r'<b id="codec">gb18030</b>', page.text) and "神经内科" in page.text  # decoded
    read = _events(settings)[-1]
    assert keys_of(read)[0] == "api-read"
    fix_mapping(settings)
    done = client.post(
        f"/console/messages/{failed}/reprocess",
        data={"reason": "REF^I12 mapping restored", "csrf": csrf_of(page.text)},
    )
    assert done.status_code == 303
    after = client.get(done.headers["location"])
    assert 'id="state">已转换<' in after.text  # zh-Hans: olivia's language
    assert "REF^I12 mapping restored" in after.text  # the reason, kept with the action
    kinds = [keys_of(e)[0] for e in _events(settings)]
    assert kinds[-3:] == ["converted", "operator", "api-read"]
    operator = [e for e in _events(settings) if keys_of(e)[0] == "operator"][-1]
    assert operator["outcomeDesc"] == "reprocess"
    requestor = next(a for a in operator["agent"] if a["requestor"])  # type: ignore[union-attr]
    assert requestor["who"]["identifier"]["value"] == "olivia"


def test_an_action_needs_a_reason(app: FastAPI, home: tuple) -> None:
    failed = home[1]
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{failed}").text)
    answer = client.post(f"/console/messages/{failed}/resolve", data={"reason": "  ", "csrf": csrf})
    assert answer.status_code == 409 and "console.no-reason" in answer.text


def test_the_language_is_remembered_per_user(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    page = client.get("/console/dashboard")
    assert "总览" in page.text
    switched = client.post(
        "/console/lang",
        data={"lang": "zh-Hant-HK", "back": "/dashboard", "csrf": csrf_of(page.text)},
    )
    assert switched.status_code == 303
    again = login(browser(app), "olivia").get("/console/dashboard")  # another browser
    assert "總覽" in again.text and "⟦" not in again.text


def test_the_dashboard_counts_per_listener(app: FastAPI, home: tuple) -> None:
    settings = home[0]
    store = open_store(settings)
    try:
        rows = {r.name: r for r in _data.dashboard(store, {})["listeners"]}
    finally:
        store.close()
    mllp = rows["mllp"]  # the failed referral and the converted report
    assert (mllp.hour["received"], mllp.hour["failed"], mllp.hour["converted"]) == (2, 1, 1)
    assert mllp.day == mllp.hour and sum(mllp.spark) == 2
    page = login(browser(app), "olivia").get("/console/dashboard?fragment=1")
    assert page.status_code == 200 and "<svg" in page.text and 'data-name="mllp"' in page.text


def test_a_bad_since_is_refused_without_echoing_it(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get("/console/messages").text)
    answer = client.post("/console/messages", data={"since": "K583726A", "csrf": csrf})
    assert answer.status_code == 400 and "K583726A" not in answer.text


def test_the_auditor_page_verifies_the_log_and_shows_the_transfer_report(
    app: FastAPI,
) -> None:
    client = login(browser(app), "audrey")
    page = client.get("/console/audit")
    assert 'id="verdict"' in page.text and "The audit log is intact" in page.text
    assert "No transfers this year" in page.text and "⟦" not in page.text


def test_an_oversized_form_is_refused(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get("/console/messages").text)
    answer = client.post("/console/messages", data={"sender": "x" * 70_000, "csrf": csrf})
    assert answer.status_code == 413


def test_a_firing_alert_shows_on_the_alerts_page_in_the_users_language(
    app: FastAPI, home: tuple
) -> None:
    from tests.alerts.conftest import Queue

    settings = home[0]
    (settings.home / "alerts.yaml").write_text(
        "alerts:\n  defaults:\n    queue_depth: {warning: 2}\n", encoding="utf-8"
    )
    client = login(browser(app), "olivia")  # zh-Hans
    assert 'class="alert warning"' not in client.get("/console/alerts").text
    store = open_store(settings)
    try:
        Queue(store).add("hkpmc", count=2)
    finally:
        store.close()
    page = client.get("/console/alerts").text
    assert 'class="alert warning"' in page and "开始于" in page
    english = login(browser(app), "audrey").get("/console/alerts").text  # en
    assert 'class="alert warning"' in english and "since" in english
    (settings.home / "alerts.yaml").write_text("alerts: [", encoding="utf-8")
    broken = client.get("/console/alerts")
    assert broken.status_code == 200 and 'id="alerts-unavailable"' in broken.text


def test_the_auditor_page_names_heads_no_trusted_certificate_vouches_for(
    home: tuple, tmp_path: Path
) -> None:
    """Whoever can write the database can sign tree heads with a key of their own: the
    auditor's page checks the heads against signing_trust, as `gateway audit verify`
    does, and never calls a log with heads no trusted certificate vouches for intact."""
    from gateway.datafiles import data_dir
    from gateway.signing import Signer, make_demo_pki
    from tests.audit.conftest import transfer_events

    settings = home[0]
    insider = tmp_path / "insider-pki"
    make_demo_pki(data_dir("seeds") / "network.yaml", insider)
    store = open_store(settings)
    try:
        log = AuditLog(store)
        log.record_many(transfer_events(4))
        log.sign_head(Signer.load(insider / "nsch" / "key.pem", insider / "nsch" / "cert.pem"))
    finally:
        store.close()

    def page(settings: Settings) -> str:
        made = create_app(settings, tokens=TokenSet([TOKEN]))
        try:
            return login(browser(made), "audrey").get("/console/audit").text
        finally:
            made.state.messages.close()
            made.state.reports.shutdown()

    untrusted = page(settings)
    assert "The audit log is intact" not in untrusted and "audit.untrusted-head" in untrusted
    trusted = page(dataclasses.replace(settings, signing_trust=insider / "ca"))
    assert "The audit log is intact" in trusted  # the CA that issued the head's key
