"""Adversarial review of the console's sessions, CSRF, roles and headers: an insider with
an operator or auditor account, an outsider on the hospital network. Each test is one
attack; most show the console already holds, a few were defects (named in each)."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from gateway import Settings
from gateway.console import Users
from gateway.console._session import COOKIE, PRE_COOKIE
from gateway.console._tables import sessions
from gateway.store import open_store, utcnow
from tests.store.browse import fix_mapping

from .conftest import PASSWORD, Browser, browser, csrf_of, login


def _state(settings: Settings, message_id: int) -> str | None:
    store = open_store(settings)
    try:
        return store.state_of(message_id)
    finally:
        store.close()


def _sql(settings: Settings, statement: sa.Executable) -> list[sa.Row[tuple[object, ...]]]:
    store = open_store(settings)
    try:
        with store.engine.begin() as conn:
            result = conn.execute(statement)
            return list(result) if result.returns_rows else []
    finally:
        store.close()


def _cookie(client: Browser) -> str:
    value = client.cookies.get(COOKIE)
    assert value
    return value


# -- CSRF ---------------------------------------------------------------------------------
def test_another_sessions_csrf_token_is_refused(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    fix_mapping(settings)
    victim = login(browser(app), "olivia")
    attacker = login(browser(app), "olivia")  # the same user, another browser
    theirs = csrf_of(attacker.get("/console/dashboard").text)
    answer = victim.post(
        f"/console/messages/{failed}/reprocess", data={"reason": "x", "csrf": theirs}
    )
    assert answer.status_code == 403 and _state(settings, failed) == "failed"


def test_a_token_from_before_sign_out_is_refused(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    fix_mapping(settings)
    client = login(browser(app), "olivia")
    old = csrf_of(client.get("/console/dashboard").text)
    assert client.post("/console/logout", data={"csrf": old}).status_code == 303
    login(client, "olivia")
    answer = client.post(f"/console/messages/{failed}/reprocess", data={"reason": "x", "csrf": old})
    assert answer.status_code == 403 and _state(settings, failed) == "failed"


def test_no_state_change_through_get_method_override_or_json(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    fix_mapping(settings)
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get("/console/dashboard").text)
    path = f"/console/messages/{failed}/reprocess"
    assert client.get(path, params={"reason": "x", "csrf": csrf}).status_code == 405
    for header in ("X-HTTP-Method-Override", "X-Method-Override"):
        assert client.get(path, params={"reason": "x"}, headers={header: "POST"}).status_code == 405
    # a body the form parser cannot read carries no token, whatever its type says
    as_json = client.post(path, json={"reason": "x", "csrf": csrf})
    assert as_json.status_code == 403
    # the token in the query string is not the form's
    in_query = client.post(path, params={"csrf": csrf}, data={"reason": "x"})
    assert in_query.status_code == 403
    assert _state(settings, failed) == "failed"


# -- sessions -----------------------------------------------------------------------------
def _replay(app: FastAPI, token: str) -> int:
    """The status of the dashboard asked by another browser presenting ``token``."""
    other = browser(app)
    return other.get("/console/dashboard", headers={"Cookie": f"{COOKIE}={token}"}).status_code


def test_signing_in_over_a_session_ends_the_old_one(app: FastAPI) -> None:
    """Defect fixed: signing in over an existing session (a cookie fixed by an attacker,
    or the previous user's on a shared ward PC) issued a new token but left the old
    session alive in the store."""
    client = login(browser(app), "audrey")
    token = _cookie(client)
    assert _replay(app, token) == 200
    login(client, "olivia")
    assert _cookie(client) != token  # a new token at sign-in
    assert _replay(app, token) == 303  # and the old one is over


def test_sign_out_ends_the_session_in_the_store(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    token = _cookie(client)
    assert _replay(app, token) == 200
    client.post("/console/logout", data={"csrf": csrf_of(client.get("/console/dashboard").text)})
    assert _replay(app, token) == 303


def test_the_dashboards_polling_does_not_keep_an_idle_session_alive(
    app: FastAPI, home: tuple
) -> None:
    """Defect fixed: the dashboard's script fetches ``?fragment=1`` every 10 s, and each
    fetch counted as activity: a console left open never reached the idle timeout."""
    settings = home[0]
    client = login(browser(app), "olivia")
    idle_since = utcnow() - timedelta(minutes=20)
    _sql(settings, sessions.update().values(seen_at=idle_since))
    assert client.get("/console/dashboard?fragment=1").status_code == 200
    (seen,) = _sql(settings, sa.select(sessions.c.seen_at))
    assert abs((seen.seen_at - idle_since).total_seconds()) < 1  # not a sign of life
    assert client.get("/console/dashboard").status_code == 200  # a page the user asked for
    (seen,) = _sql(settings, sa.select(sessions.c.seen_at))
    assert seen.seen_at > idle_since + timedelta(minutes=19)


def test_a_session_older_than_its_lifetime_ends_however_active(app: FastAPI, home: tuple) -> None:
    settings = home[0]
    client = login(browser(app), "olivia")
    _sql(settings, sessions.update().values(created_at=utcnow() - timedelta(hours=12, minutes=1)))
    assert client.get("/console/dashboard").status_code == 303


# -- roles --------------------------------------------------------------------------------
def test_an_auditor_cannot_act_on_outbox_records_or_resolve(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    client = login(browser(app), "audrey")
    csrf = csrf_of(client.get("/console/dashboard").text)
    assert (
        client.post(
            f"/console/messages/{failed}/resolve", data={"reason": "x", "csrf": csrf}
        ).status_code
        == 403
    )
    for action in ("retry", "release", "replay"):
        answer = client.post(f"/console/outbox/1/{action}", data={"reason": "x", "csrf": csrf})
        assert answer.status_code == 403
    assert _state(settings, failed) == "failed"


def test_a_role_taken_away_counts_at_once_in_a_live_session(app: FastAPI, home: tuple) -> None:
    settings, failed, _ = home
    fix_mapping(settings)
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{failed}").text)
    _sql(settings, sa.text("UPDATE console_users SET role = 'auditor' WHERE name = 'olivia'"))
    answer = client.post(
        f"/console/messages/{failed}/reprocess", data={"reason": "x", "csrf": csrf}
    )
    assert answer.status_code == 403 and _state(settings, failed) == "failed"


def test_a_disabled_users_live_session_is_refused(app: FastAPI, home: tuple) -> None:
    settings = home[0]
    client = login(browser(app), "olivia")
    # the flag alone (not Users.disable, which also deletes the sessions) is enough
    _sql(settings, sa.text("UPDATE console_users SET disabled = 1 WHERE name = 'olivia'"))
    assert client.get("/console/dashboard").status_code == 303


def test_an_operator_has_no_admin_page_by_any_method(app: FastAPI) -> None:
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get("/console/dashboard").text)
    assert client.get("/console/audit?year=2026").status_code == 403
    assert client.post("/console/audit", data={"csrf": csrf}).status_code == 405


# -- redirects, headers -------------------------------------------------------------------
def test_no_open_redirect_through_next_or_back(app: FastAPI) -> None:
    client = browser(app)
    page = client.get("/console/login?next=https://evil.example/")
    answer = client.post(
        "/console/login?next=https://evil.example/",
        data={
            "name": "olivia",
            "password": PASSWORD,
            "csrf": csrf_of(page.text),
            "next": "//evil.example/",
        },
    )
    assert answer.headers["location"] == "/console/dashboard"
    csrf = csrf_of(client.get("/console/dashboard").text)
    for back in ("//evil.example/", "https://evil.example/", "/\\evil.example/", "\\\\evil"):
        moved = client.post("/console/lang", data={"lang": "en", "back": back, "csrf": csrf})
        location = moved.headers["location"]
        assert location.startswith("/console/") and not location.startswith("/console//")
        assert "evil" not in location or location.startswith("/console/")


def test_every_console_response_carries_the_security_headers(app: FastAPI, home: tuple) -> None:
    """Defect fixed: FastAPI's own answers (an unknown path's 404, a malformed
    parameter's 422, which echoes the parameter) and the static files came without
    the console's headers: no CSP, no frame-ancestors, no nosniff, cacheable."""
    client = login(browser(app), "olivia")
    for path in (
        "/console/dashboard",
        "/console/nowhere",
        "/console/messages/not-a-number",
        "/console/dashboard?fragment=x",
        "/console/static/console.js",
    ):
        answer = client.get(path)
        headers = answer.headers
        assert "frame-ancestors 'none'" in headers.get("content-security-policy", ""), path
        assert headers.get("x-frame-options") == "DENY", path
        assert headers.get("x-content-type-options") == "nosniff", path
        assert headers.get("cache-control") == "no-store", path


def test_patient_pages_are_not_cached(app: FastAPI, home: tuple) -> None:
    failed = home[1]
    client = login(browser(app), "audrey")
    for path in (f"/console/messages/{failed}", "/console/messages", "/console/referrals"):
        assert client.get(path).headers["cache-control"] == "no-store"


# -- sign-in limiter ----------------------------------------------------------------------
def test_forwarded_for_does_not_reset_the_per_address_limit(app: FastAPI) -> None:
    client = browser(app)
    csrf = csrf_of(client.get("/console/login").text)
    for i in range(5):  # five names, five claimed addresses, one real client
        answer = client.post(
            "/console/login",
            data={"name": f"guess{i}", "password": "wrong one!", "csrf": csrf},
            headers={"X-Forwarded-For": f"10.9.9.{i}", "X-Real-IP": f"10.9.9.{i}"},
        )
        assert answer.status_code == 401
    blocked = client.post(
        "/console/login",
        data={"name": "olivia", "password": PASSWORD, "csrf": csrf},
        headers={"X-Forwarded-For": "10.9.9.99"},
    )
    assert blocked.status_code == 429


def test_a_look_alike_login_name_is_not_the_user(app: FastAPI, home: tuple) -> None:
    """Another case, full-width or composed form of a name is another (unknown) login:
    it cannot sign in as the user, so it cannot be used to try passwords outside the
    user's count."""
    client = browser(app)
    csrf = csrf_of(client.get("/console/login").text)
    for name in ("OLIVIA", "Olivia", "ｏｌｉｖｉａ", "olivia ", " olivia", "olivia\u200b"):
        answer = client.post(
            "/console/login", data={"name": name, "password": PASSWORD, "csrf": csrf}
        )
        assert answer.status_code in (401, 429), name
        assert "gw_console=" not in answer.headers.get("set-cookie", "")
    store = open_store(home[0])
    try:
        assert [u.name for u in Users(store).list()] == ["adam", "audrey", "olivia"]
    finally:
        store.close()


def test_a_planted_pre_login_token_cannot_forge_a_sign_in(app: FastAPI) -> None:
    """Defect fixed: the login form's double submit compared the form's token with a
    plain cookie, ``gw_console_pre`` (Path=/console). Whoever can plant a cookie for the
    host (a sibling host of the hospital's domain; a machine in the path of any
    plain-HTTP request to it) knew both halves and could sign a nurse in as the
    attacker (login CSRF). The cookies are ``__Host-`` now: a browser accepts them only
    Secure, Path=/, without Domain, from this host over HTTPS."""
    client = browser(app)
    page = client.get("/console/login")
    pre = next(c for c in page.headers.get_list("set-cookie") if c.startswith(PRE_COOKIE + "="))
    flags = {f.strip().lower() for f in pre.split(";")[1:]}
    assert PRE_COOKIE.startswith("__Host-") and COOKIE.startswith("__Host-")
    assert {"secure", "path=/", "samesite=strict"} <= flags
    assert not any(f.startswith("domain") for f in flags)
    # a token planted under a name a browser lets anyone set is not looked at
    forged = browser(app)
    answer = forged.post(
        "/console/login",
        data={"name": "olivia", "password": PASSWORD, "csrf": "planted-token"},
        headers={"Cookie": "gw_console_pre=planted-token"},
    )
    assert answer.status_code == 403


def test_a_path_cannot_forge_a_log_line(app: FastAPI, caplog: pytest.LogCaptureFixture) -> None:
    """A refused POST logs its path; an insider's path with a line break would forge a
    second line in the text log (the auditor's record of who did what). It cannot: a
    line feed never reaches the console's mount, and the URL parser drops CR/LF."""
    client = login(browser(app), "olivia")
    forged = "retry%0D2026-12-06%2009:00:00%20INFO%20gateway.console:%20reprocess%20by%20adam"
    with caplog.at_level(logging.INFO, logger="gateway.console"):
        answer = client.post(f"/console/outbox/1/{forged}", data={"reason": "x"})
    assert answer.status_code == 403
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.console"]
    assert lines and not [line for line in lines if len(line.splitlines()) > 1]


def test_an_id_out_of_the_stores_range_is_not_found_not_a_crash(app: FastAPI) -> None:
    """Defect fixed: an id beyond 64 bits (or a non-ASCII digit as ``after=``) went to
    the database as is: OverflowError, a 500 without the console's headers, on the
    detail, the results' next page and every action."""
    client = login(browser(app), "olivia")
    huge = "9" * 23
    assert client.get(f"/console/messages/{huge}").status_code == 404
    for after in (huge, "\u00b2", "\u0661\u0662"):
        assert client.get("/console/messages", params={"after": after}).status_code == 200
    csrf = csrf_of(client.get("/console/dashboard").text)
    for path in (f"/console/outbox/{huge}/retry", f"/console/messages/{huge}/resolve"):
        assert client.post(path, data={"reason": "x", "csrf": csrf}).status_code == 404


def test_a_view_whose_audit_record_fails_shows_no_patient_data(
    app: FastAPI, home: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect fixed: a view's ``api-read`` record went through the pipeline's deferred,
    never-failing append: when the audit log could not be written (the database full,
    a lock, a broken chain), the page showed the patient's data anyway, unaudited."""
    from gateway.audit import AuditLog

    failed, converted = home[1], home[2]
    client = login(browser(app), "audrey")
    assert "許" in client.get(f"/console/messages/{converted}").text  # the patient's name

    def broken(*args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("database or disk is full"))

    monkeypatch.setattr(AuditLog, "append_rows", broken)
    with pytest.MonkeyPatch.context() as quiet:  # the failure is logged, as it should be
        quiet.setattr(logging.getLogger("gateway"), "disabled", True)
        for path in (f"/console/messages/{converted}", f"/console/messages/{failed}"):
            page = client.get(path)
            assert page.status_code == 503 and "audit.write-failed" in page.text
            assert "許" not in page.text and "神经内科" not in page.text
        listing = client.get("/console/messages")
        assert listing.status_code == 503
        assert f'href="/console/messages/{failed}"' not in listing.text
