"""The inbound stage on PostgreSQL too (when GATEWAY_TEST_DATABASE_URL names a server:
.ci/run starts one): receive, the same Bundle again, a batch entry rolled back to its
savepoint, SMART tokens and a replayed jti, a referral accepted and queued."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.signing import sign_bundle
from tests.api.test_app import Client
from tests.store.dbs import BACKENDS, database

from .conftest import (
    LOCAL,
    LOCAL_AUTH,
    NSCH_TOKEN,
    assertion,
    counts,
    make_home,
    partner,
    signer,
    token_form,
)


@pytest.fixture(params=BACKENDS)
def db_client(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Path, converter: Converter
) -> Iterator[tuple[Client, Settings]]:
    for url in database(request.param, tmp_path):
        settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN})
        toml = settings.home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        settings = Settings.load(home=settings.home, env={})
        app = create_app(settings, converter, TokenSet([LOCAL]))
        try:
            yield Client(app), settings
        finally:
            app.state.fhir.close()


def test_the_inbound_flow_on_each_database(
    db_client: tuple[Client, Settings], signed_referral: bytes, pki: Path
) -> None:
    client, settings = db_client
    first = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert first.status_code == 200, first.text
    again = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert again.json() == first.json()
    assert counts(settings)["inbound_bundles"] == 1

    batch: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "batch",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/batch", "value": "PG-1"},
        "entry": [
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "血压"},
                          "subject": {"reference": "Patient?identifier=x|nobody"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                          "code": {"text": "心率"}},
             "request": {"method": "POST", "url": "Observation"}},
        ],
    }  # fmt: skip
    body = orjson.dumps(sign_bundle(batch, signer(pki, "nsch"), "author"))
    answer = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).json()
    statuses = [e["response"]["status"][:3] for e in answer["entry"]]
    assert statuses == ["422", "201", "201"]
    found = client.get("/fhir/Observation", headers=LOCAL_AUTH).json()["entry"]
    assert [o["resource"]["code"]["text"] for o in found] == ["心率"]

    jwt = assertion(pki, "nsch", "nsch")
    assert client.post("/auth/token", data=token_form(jwt)).status_code == 200
    assert client.post("/auth/token", data=token_form(jwt)).status_code == 401

    task = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"][0]["resource"]
    accepted = client.post(f"/fhir/Task/{task['id']}/$accept", headers=LOCAL_AUTH)
    assert accepted.status_code == 200 and accepted.headers["x-gateway-outbox"] != "none"


@pytest.mark.parametrize(
    ("method", "url", "where"),
    [
        ("get", "/Consent/a%00b", "the URL's path"),
        ("get", "/Consent?patient=a%00b", "?patient"),
        ("post", "/Consent/a%00b/$withdraw", "the URL's path"),
        ("get", "/policy/decisions?outcome=a%00b", "?outcome"),
        ("post", "/policy/check?to=hkpmc&from=a%00b", "?from"),
        ("get", "/fhir/Patient?identifier=x%7Ca%00b", "?identifier"),
        ("get", "/fhir/Task?patient%00=x", "?patient\ufffd"),
        ("post", "/fhir/Task/a%00b/$accept", "the URL's path"),
        ("get", "/messages?control_id=a%00b", "?control_id"),
        ("get", "/console/messages/1%00", "the URL's path"),
    ],
)  # fmt: skip
def test_a_url_holding_nul_is_refused_naming_where(
    db_client: tuple[Client, Settings], method: str, url: str, where: str
) -> None:
    """An id or a search value holding U+0000 was a 500 on PostgreSQL (its text holds no
    NUL: the look-up failed); on every route, a 400 naming the parameter or the path."""
    client, _ = db_client
    resp = client.request(method, url, headers=LOCAL_AUTH)
    assert resp.status_code == 400, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "request.invalid"
    assert "U+0000" in issue["diagnostics"] and issue["location"] == [where]


def test_a_rejection_reason_holding_nul_is_refused(
    db_client: tuple[Client, Settings], signed_referral: bytes
) -> None:
    """A $reject reason holding U+0000 became the Task's statusReason, kept and sent to
    the referring partner as FHIR text no FHIR string carries: refused, nothing changed."""
    client, _ = db_client
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    task = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"][0]["resource"]
    reason = {
        "resourceType": "Parameters",
        "parameter": [{"name": "reason", "valueString": "床\0"}],
    }
    resp = client.post(
        f"/fhir/Task/{task['id']}/$reject", content=orjson.dumps(reason), headers=LOCAL_AUTH
    )
    assert resp.status_code == 400, resp.text
    assert "U+0000" in resp.json()["issue"][0]["diagnostics"]
    after = client.get(f"/fhir/Task/{task['id']}", headers=LOCAL_AUTH).json()
    assert after["status"] == task["status"]


def test_a_client_assertion_whose_jti_holds_nul_is_refused(
    db_client: tuple[Client, Settings], pki: Path
) -> None:
    """A partner's signed assertion with a jti holding U+0000: kept against replays, on
    PostgreSQL (its text holds no NUL) the insert failed with a 500."""
    client, _ = db_client
    jwt = assertion(pki, "nsch", "nsch", jti="j\0" + "1")
    resp = client.post("/auth/token", data=token_form(jwt))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client" and "U+0000" in resp.text
