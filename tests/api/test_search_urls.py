"""Searchset Bundles' URLs (gateway/api/_urls.py): ``GET /fhir/{type}`` and ``GET
/fhir/AuditEvent`` built their entries' ``fullUrl`` and their links from the request's
Host header when ``inbound_public_url`` was unset (Host-header injection: a client's
Host in the answer). Now: under ``inbound_public_url`` when set; unset, entries have no
``fullUrl`` (allowed for search results) and links are relative references."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.signing import sign_bundle
from tests.api.test_app import Client
from tests.audit.conftest import pki  # noqa: F401  (the demo PKI, once per session)
from tests.inbound.conftest import GOLDEN_REFERRAL, NSCH_TOKEN, make_home, partner, signer

ADMIN = "admin-token-0123456789abcdef"
EVIL = "attacker.example"
PUBLIC = "https://gw.hkpmc.example.hk"
SEARCHES = ("/fhir/Patient?_count=1", "/fhir/ServiceRequest", "/fhir/AuditEvent?_count=1")


@pytest.fixture
def home(tmp_path: Path, pki: Path, converter: Converter) -> Settings:  # noqa: F811
    """HKPMC's gateway with NSCH's signed referral (许嘉玮 / 許嘉瑋) received."""
    referral = orjson.loads(GOLDEN_REFERRAL.read_bytes())
    signed_referral = orjson.dumps(sign_bundle(referral, signer(pki, "nsch"), "author"))
    settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN})
    app = create_app(settings, converter, TokenSet([f"{ADMIN} admin"]))
    sent = Client(app).post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert sent.status_code == 200, sent.text
    app.state.fhir.close()
    return settings


@pytest.fixture
def served(home: Settings, converter: Converter) -> Iterator[Any]:
    def serve(public: str | None) -> Client:
        settings = dataclasses.replace(home, inbound_public_url=public)
        app = create_app(settings, converter, TokenSet([f"{ADMIN} admin"]))
        apps.append(app)
        return Client(app)

    apps: list[Any] = []
    yield serve
    for app in apps:
        app.state.fhir.close()


def _search(client: Client, url: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {ADMIN}", "Host": EVIL}
    resp = client.get(url, headers=headers)
    assert resp.status_code == 200, (url, resp.text)
    assert EVIL not in resp.text  # the Host a client chose is nowhere in the answer
    page: dict[str, Any] = resp.json()
    assert page["type"] == "searchset" and page["entry"], url
    return page


@pytest.mark.parametrize("url", SEARCHES)
def test_without_a_public_url_no_url_comes_from_the_host(served: Any, url: str) -> None:
    page = _search(served(None), url)
    for entry in page["entry"]:
        assert "fullUrl" not in entry  # the resource's type and id say which it is
        assert entry["resource"]["id"] and entry["search"] == {"mode": "match"}
    links = {lk["relation"]: lk["url"] for lk in page["link"]}
    path = url.split("?")[0]
    assert links["self"].startswith(path)  # relative: resolved against the URL asked
    if "next" in links:
        assert links["next"].startswith(path + "?") and "_after=" in links["next"]


@pytest.mark.parametrize("url", SEARCHES)
def test_with_a_public_url_every_url_is_under_it(served: Any, url: str) -> None:
    page = _search(served(PUBLIC), url)
    for entry in page["entry"]:
        resource = entry["resource"]
        assert entry["fullUrl"] == f"{PUBLIC}/fhir/{resource['resourceType']}/{resource['id']}"
    for lk in page["link"]:
        assert lk["url"].startswith(PUBLIC + url.split("?")[0])
