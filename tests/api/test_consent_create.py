"""POST /Consent is FHIR's create (http.html#create): 201 with Location (the version
made, [base]/Consent/id/_history/vid), ETag, Last-Modified and the Consent as stored
(meta.versionId and meta.lastUpdated the gateway's), or what ``Prefer: return=`` asks:
nothing (minimal), the resource (representation) or an OperationOutcome. It answered
201 with a summary of its own ({"consent": ..., "released": ...}) before. For an id on
file it is FHIR's update (http.html#update): 200, no Location (it answered 201 for
every version before).

The released held records are tested in tests/policy/test_surfaces.py."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.test_app import Client
from tests.policy.conftest import HKID, consent

TOKEN = "consent-create-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PUBLIC = "https://gw.hkpmc.example.hk"


def _client(home: Path, converter: Converter) -> Iterator[Client]:
    app = create_app(Settings.load(home=home, env={}), converter, TokenSet([TOKEN]))
    yield Client(app)
    app.state.fhir.close()


@pytest.fixture
def client(tmp_path: Path, converter: Converter) -> Iterator[Client]:
    yield from _client(tmp_path, converter)


@pytest.fixture
def public_client(tmp_path: Path, converter: Converter) -> Iterator[Client]:
    (tmp_path / "gateway.toml").write_text(f'inbound_public_url = "{PUBLIC}"\n')
    yield from _client(tmp_path, converter)


def _post(client: Client, body: dict[str, Any], prefer: str | None = None) -> Any:
    headers = {**AUTH, "Content-Type": "application/fhir+json"}
    if prefer is not None:
        headers["Prefer"] = prefer
    return client.post("/Consent", content=orjson.dumps(body), headers=headers)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _versioned(resp: Any, version: int) -> None:
    """Version ``version`` of consent-1: the first created (201, Location), a later one
    an update of the Consent on file (200, no Location: FHIR update); both with
    Content-Location, ETag and Last-Modified."""
    where = f"/Consent/consent-1/_history/{version}"  # no Host
    if version == 1:
        assert resp.status_code == 201, resp.text
        assert resp.headers["location"] == where
    else:
        assert resp.status_code == 200, resp.text
        assert "location" not in resp.headers
    assert resp.headers["content-location"] == where
    assert resp.headers["etag"] == f'W/"{version}"'
    modified = parsedate_to_datetime(resp.headers["last-modified"])  # an HTTP-date
    assert modified.tzinfo is not None and abs(datetime.now(UTC) - modified).total_seconds() < 60


def test_create_answers_the_consent_stored_with_its_version(client: Client) -> None:
    sent = consent((HKID, "K583726A"), "HKPMC")
    made = _post(client, sent)
    _versioned(made, 1)
    assert made.headers["content-type"] == "application/fhir+json"
    assert made.headers["x-gateway-released"] == "none"  # nothing was held for it
    assert "preference-applied" not in made.headers
    body = made.json()
    meta = body.pop("meta")
    assert body == sent  # the Consent as sent, with what the server sets
    assert meta["versionId"] == "1"
    modified = parsedate_to_datetime(made.headers["last-modified"])
    assert _instant(meta["lastUpdated"]).replace(microsecond=0) == modified
    listed = client.get(f"/Consent?patient={HKID}|K583726A", headers=AUTH).json()
    assert listed["entry"][0]["resource"] == made.json()  # what is on file

    # the same id again: a new version; a client's versionId is not the server's
    again = copy.deepcopy(sent)
    again["meta"] = {"versionId": "9", "profile": ["https://example.org/consent"]}
    second = _post(client, again, prefer="return=representation")
    _versioned(second, 2)
    assert second.headers["preference-applied"] == "return=representation"
    assert second.json()["meta"]["versionId"] == "2"
    assert second.json()["meta"]["profile"] == ["https://example.org/consent"]  # kept

    withdrawn = client.post("/Consent/consent-1/$withdraw", headers=AUTH)
    assert withdrawn.status_code == 200 and withdrawn.headers["etag"] == 'W/"3"'
    assert withdrawn.json()["meta"]["versionId"] == "3" and withdrawn.json()["status"] == "inactive"


def test_prefer_return_minimal_and_operation_outcome(client: Client) -> None:
    sent = consent((HKID, "K583726A"), "HKPMC")
    minimal = _post(client, sent, prefer="return=minimal")
    _versioned(minimal, 1)
    assert minimal.content == b"" and minimal.headers["preference-applied"] == "return=minimal"
    outcome = _post(client, sent, prefer='respond-async, return="OperationOutcome"')
    _versioned(outcome, 2)
    assert outcome.headers["content-type"] == "application/fhir+json"
    body = outcome.json()
    assert body["resourceType"] == "OperationOutcome"
    [issue] = body["issue"]  # nothing released: the Consent kept, alone
    assert issue["severity"] == "information" and issue["code"] == "informational"
    assert issue["details"]["coding"][0]["code"] == "policy.consent-kept"
    assert issue["details"]["text"] == "Consent/consent-1 version 2 is on file (active)"
    # an unknown preference: the default, the resource
    other = _post(client, sent, prefer="return=everything")
    _versioned(other, 3)
    assert other.json()["resourceType"] == "Consent" and "preference-applied" not in other.headers


def test_a_consent_without_id_gets_the_servers(client: Client) -> None:
    sent = consent((HKID, "K583726A"), "HKPMC")
    del sent["id"]
    made = _post(client, sent)
    assert made.status_code == 201, made.text
    given = made.json()["id"]
    assert given and made.headers["location"] == f"/Consent/{given}/_history/1"
    listed = client.get(f"/Consent?patient={HKID}|K583726A", headers=AUTH).json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [given]
    withdrawn = client.post(f"/Consent/{given}/$withdraw", headers=AUTH)
    assert withdrawn.status_code == 200 and withdrawn.json()["id"] == given


def test_location_is_under_the_public_url(public_client: Client) -> None:
    made = _post(public_client, consent((HKID, "K583726A"), "HKPMC"))
    assert made.status_code == 201, made.text
    assert made.headers["location"] == f"{PUBLIC}/Consent/consent-1/_history/1"
    refused = _post(public_client, {"resourceType": "Consent"})
    assert refused.status_code == 400 and "location" not in refused.headers
