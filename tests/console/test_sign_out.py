"""Signing out: after the session expired it ends cleanly (back to the sign-in form, 303)
instead of a 403; without a live session nothing changes on the server, and a live
session still ends only with its own CSRF token."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from fastapi import FastAPI

from gateway import Settings
from gateway.console._session import COOKIE
from gateway.console._tables import sessions
from gateway.store import open_store, utcnow

from .conftest import browser, csrf_of, login


def _sessions(settings: Settings) -> int:
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(sessions)).scalar_one())
    finally:
        store.close()


def test_signing_out_after_the_session_expired_goes_to_sign_in(app: FastAPI, home: tuple) -> None:
    settings = home[0]
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get("/console/dashboard").text)  # the page left open
    store = open_store(settings)
    try:
        with store.engine.begin() as conn:  # idle past the timeout
            conn.execute(sessions.update().values(seen_at=utcnow() - timedelta(hours=2)))
    finally:
        store.close()
    answer = client.post("/console/logout", data={"csrf": csrf})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/console/login"
    assert COOKIE in answer.headers.get("set-cookie", "")  # the stale cookie dropped
    assert client.get("/console/login").status_code == 200


def test_a_sign_out_without_a_session_changes_nothing(app: FastAPI, home: tuple) -> None:
    """Another browser (no session, a made-up token, no CSRF token) signs out: it goes to
    the sign-in form and the signed-in user's session lives on."""
    settings = home[0]
    user = login(browser(app), "olivia")
    assert _sessions(settings) == 1
    stranger = browser(app)
    assert stranger.post("/console/logout", data={}).status_code == 303
    stranger.cookies.set(COOKIE, "made-up-token", domain="gw")
    assert stranger.post("/console/logout", data={"csrf": "x"}).status_code == 303
    assert _sessions(settings) == 1
    assert user.get("/console/dashboard").status_code == 200


def test_a_live_session_still_needs_its_csrf_token_to_end(app: FastAPI, home: tuple) -> None:
    settings = home[0]
    client = login(browser(app), "olivia")
    assert client.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    assert client.post("/console/logout", data={}).status_code == 403
    assert _sessions(settings) == 1 and client.get("/console/dashboard").status_code == 200
    csrf = csrf_of(client.get("/console/dashboard").text)
    assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
    assert _sessions(settings) == 0
