"""GET /messages, GET /messages/{id}, POST /messages/{id}/$reprocess: Bearer token,
keyset pages with a next link, OperationOutcome errors, and a failed message converted
after the mapping fix with both outcomes kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from gateway.api import TokenSet, create_app
from gateway.api._auth import fingerprint
from gateway.audit import AuditLog
from gateway.audit._events import keys_of
from gateway.store import open_store
from tests.api.test_app import Client

from .browse import GB18030_REF, broken_home, fill, fix_mapping

TOKEN = "store-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def call(app: FastAPI, method: str, url: str, **kwargs: Any) -> httpx.Response:
    return Client(app).request(method, url, **kwargs)


def test_browse_and_reprocess_on_the_api(store_url: str, tmp_path: Path) -> None:
    settings = broken_home(tmp_path, store_url)
    failed, converted = fill(settings)
    app = create_app(settings, tokens=TokenSet([TOKEN]))

    assert call(app, "GET", "/messages").status_code == 401
    assert call(app, "GET", f"/messages/{failed}").status_code == 401
    assert call(app, "POST", f"/messages/{failed}/$reprocess").status_code == 401

    page = call(app, "GET", "/messages?state=failed", headers=AUTH).json()
    assert [m["id"] for m in page["messages"]] == [failed] and page["next"] is None
    assert page["messages"][0]["control_id"] == "LAX220260611101500003"

    first = call(app, "GET", "/messages?limit=1", headers=AUTH)
    assert first.json()["next"] == str(converted)
    link = first.json()["links"]["next"]
    assert first.headers["link"] == f'<{link}>; rel="next"'
    second = call(app, "GET", link, headers=AUTH).json()
    assert [m["id"] for m in second["messages"]] == [failed] and second["next"] is None

    shown = call(app, "GET", f"/messages/{failed}", headers=AUTH).json()
    assert shown["original"]["text"] == GB18030_REF.decode("gb18030")
    assert shown["outcomes"][0]["issues"][0]["code"] == "mapping.unsupported-message"
    by_patient = call(
        app, "GET", "/messages", params={"patient": shown["patients"][0]}, headers=AUTH
    ).json()
    assert [m["id"] for m in by_patient["messages"]] == [failed]

    fix_mapping(settings)
    done = call(app, "POST", f"/messages/{failed}/$reprocess", headers=AUTH)
    assert done.status_code == 200
    body = done.json()
    assert body["state"] == "converted"
    assert [(o["state"], o["current"]) for o in body["outcomes"]] == [
        ("failed", False),
        ("converted", True),
    ]
    assert body["outcomes"][1]["output"]["type"] == "transaction"
    app.state.messages.close()
    # audited: the new outcome and the operator's action, after the first conversions
    store = open_store(settings)
    try:
        events = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    kinds = [keys_of(e)[0] for e in events]
    assert kinds[-2:] == ["converted", "operator"] and "received" not in kinds[-2:]
    assert events[-1]["outcomeDesc"] == "reprocess"
    requestor = next(a for a in events[-1]["agent"] if a["requestor"])
    assert requestor["who"]["identifier"]["value"] == fingerprint(TOKEN)  # the token's name


def test_errors_are_operation_outcomes(store_url: str, tmp_path: Path) -> None:
    settings = broken_home(tmp_path, store_url)
    app = create_app(settings, tokens=TokenSet([TOKEN]))
    for method, url, status, code in [
        ("GET", "/messages/77", 404, "store.not-found"),
        ("POST", "/messages/77/$reprocess", 404, "store.not-found"),
        ("GET", "/messages?after=zz", 400, "store.bad-cursor"),
        ("GET", "/messages?since=yesterday-ish", 400, "config.bad-setting"),
    ]:
        resp = call(app, method, url, headers=AUTH)
        assert resp.status_code == status, url
        outcome = resp.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["details"]["coding"][0]["code"] == code
    app.state.messages.close()


def test_next_link_never_from_the_host_header(store_url: str, tmp_path: Path) -> None:
    """GET /messages' next link (body and Link header) is relative, or under
    ``inbound_public_url``: never built from the Host a client sends (Host-header
    injection, as the searchset URLs of gateway/api/_urls.py)."""
    import dataclasses

    settings = broken_home(tmp_path, store_url)
    fill(settings)
    evil = {**AUTH, "Host": "attacker.example"}
    for public, prefix in (
        (None, "/messages?"),
        ("https://gw.example.hk", "https://gw.example.hk/messages?"),
    ):
        app = create_app(
            dataclasses.replace(settings, inbound_public_url=public), tokens=TokenSet([TOKEN])
        )
        first = call(app, "GET", "/messages?limit=1", headers=evil)
        assert "attacker.example" not in first.text + first.headers["link"]
        link = first.json()["links"]["next"]
        assert link.startswith(prefix) and "after=" in link
        assert first.headers["link"] == f'<{link}>; rel="next"'
        relative = link.removeprefix(public or "")
        assert call(app, "GET", relative, headers=AUTH).json()["next"] is None
