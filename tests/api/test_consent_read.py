"""The Consent API as a FHIR server's: the Location POST /Consent answers is readable
(GET /Consent/{id}, GET /Consent/{id}/_history/{vid}: only the current version is
kept, another is 404 naming it), If-Match is honoured on POST /Consent and $withdraw
(412, nothing changed), and a repeated $withdraw changes nothing (no new version, no
audit event). Before: the Location led to no route (404 from the router), If-Match
was ignored, and each $withdraw made a version and an event."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.audit import AuditLog
from gateway.store import open_store
from tests.api.test_app import Client
from tests.policy.conftest import HKID, consent

TOKEN = "consent-read-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings_home(tmp_path: Path) -> Settings:
    return Settings.load(home=tmp_path, env={})


@pytest.fixture
def client(settings_home: Settings, converter: Converter) -> Iterator[Client]:
    app = create_app(settings_home, converter, TokenSet([TOKEN]))
    yield Client(app)
    app.state.fhir.close()


def _post(client: Client, body: dict[str, Any], **headers: str) -> Any:
    sent = {**AUTH, "Content-Type": "application/fhir+json", **headers}
    return client.post("/Consent", content=orjson.dumps(body), headers=sent)


def _issue(resp: Any) -> dict[str, Any]:
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue: dict[str, Any] = body["issue"][0]
    return issue


def _events(settings: Settings, kind: str) -> list[dict[str, Any]]:
    store = open_store(settings)
    try:
        return [e.resource() for e in AuditLog(store).rows() if e.kind == kind]
    finally:
        store.close()


def test_the_location_is_read_and_vread(client: Client, settings_home: Settings) -> None:
    made = _post(client, consent((HKID, "K583726A"), "HKPMC"))
    assert made.status_code == 201, made.text
    location = made.headers["location"]
    assert location == "/Consent/consent-1/_history/1"
    version = client.get(location, headers=AUTH)  # vread of what was made
    assert version.status_code == 200, version.text
    assert version.headers["content-type"] == "application/fhir+json"
    assert version.json() == made.json()
    assert version.headers["etag"] == made.headers["etag"] == 'W/"1"'
    assert version.headers["last-modified"] == made.headers["last-modified"]
    read = client.get("/Consent/consent-1", headers=AUTH)
    assert read.status_code == 200 and read.json() == made.json()
    assert read.headers["etag"] == 'W/"1"'
    reads = _events(settings_home, "api-read")
    assert [e["entity"][-1]["detail"][0]["valueString"] for e in reads][-2:] == [
        "GET /Consent/consent-1/_history/1",
        "GET /Consent/consent-1",
    ]  # audited as the list is (api-read)

    second = _post(client, consent((HKID, "K583726A"), "HKPMC"))
    assert second.status_code == 200, second.text  # a new version of one on file
    assert second.headers["content-location"] == "/Consent/consent-1/_history/2"
    assert client.get("/Consent/consent-1/_history/2", headers=AUTH).json() == second.json()
    assert client.get("/Consent/consent-1", headers=AUTH).headers["etag"] == 'W/"2"'
    # version 1 is not kept: 404, naming the version asked and the one on file
    gone = client.get(location, headers=AUTH)
    assert gone.status_code == 404
    issue = _issue(gone)
    assert issue["code"] == "not-found"
    assert issue["details"]["coding"][0]["code"] == "policy.consent-version-not-found"
    said = issue["diagnostics"]
    assert "no version 1 on file" in said and "current version, 2" in said
    odd = client.get("/Consent/consent-1/_history/K583726A", headers=AUTH)
    assert odd.status_code == 404 and "K583726A" not in odd.text  # its form, not its text


def test_reads_are_authenticated_and_absent_ones_404(client: Client) -> None:
    assert _post(client, consent((HKID, "K583726A"), "HKPMC")).status_code == 201
    for path in ("/Consent/consent-1", "/Consent/consent-1/_history/1"):
        assert client.get(path).status_code == 401
        wrong = client.get(path, headers={"Authorization": "Bearer nope-0123456789"})
        assert wrong.status_code == 401 and "K583726A" not in wrong.text
    for path in ("/Consent/consent-9", "/Consent/consent-9/_history/1"):
        absent = client.get(path, headers=AUTH)
        assert absent.status_code == 404
        assert _issue(absent)["details"]["coding"][0]["code"] == "policy.consent-not-found"


def test_if_match_on_import(client: Client) -> None:
    sent = consent((HKID, "K583726A"), "HKPMC")
    # none on file: an If-Match names no version there is
    early = _post(client, sent, **{"If-Match": 'W/"1"'})
    assert early.status_code == 412
    assert client.get("/Consent/consent-1", headers=AUTH).status_code == 404  # not made
    assert _post(client, sent).status_code == 201
    stale = _post(client, sent, **{"If-Match": 'W/"7"'})
    assert stale.status_code == 412
    issue = _issue(stale)
    assert issue["code"] == "conflict"
    assert issue["details"]["coding"][0]["code"] == "policy.consent-version-conflict"
    assert "version 1 is on file" in issue["diagnostics"]
    assert client.get("/Consent/consent-1", headers=AUTH).headers["etag"] == 'W/"1"'  # kept
    fresh = _post(client, sent, **{"If-Match": 'W/"1"'})
    assert fresh.status_code == 200 and fresh.headers["etag"] == 'W/"2"'
    strong = _post(client, sent, **{"If-Match": '"2"'})  # a strong tag of the same version
    assert strong.status_code == 200 and strong.headers["etag"] == 'W/"3"'
    anything = _post(client, sent, **{"If-Match": "*"})
    assert anything.status_code == 200 and anything.headers["etag"] == 'W/"4"'


def test_if_match_on_withdraw(client: Client) -> None:
    assert _post(client, consent((HKID, "K583726A"), "HKPMC")).status_code == 201
    assert _post(client, consent((HKID, "K583726A"), "HKPMC")).status_code == 200  # v2
    stale = client.post("/Consent/consent-1/$withdraw", headers={**AUTH, "If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert _issue(stale)["details"]["coding"][0]["code"] == "policy.consent-version-conflict"
    on_file = client.get("/Consent/consent-1", headers=AUTH)
    assert on_file.json()["status"] == "active" and on_file.headers["etag"] == 'W/"2"'
    absent = client.post("/Consent/consent-9/$withdraw", headers={**AUTH, "If-Match": "*"})
    assert absent.status_code == 412
    done = client.post("/Consent/consent-1/$withdraw", headers={**AUTH, "If-Match": 'W/"2"'})
    assert done.status_code == 200 and done.headers["etag"] == 'W/"3"'
    assert done.json()["status"] == "inactive"


def test_withdraw_twice_changes_nothing(client: Client, settings_home: Settings) -> None:
    assert _post(client, consent((HKID, "K583726A"), "HKPMC")).status_code == 201
    first = client.post("/Consent/consent-1/$withdraw", headers=AUTH)
    assert first.status_code == 200 and first.headers["etag"] == 'W/"2"'
    events = len(_events(settings_home, "consent"))
    again = client.post("/Consent/consent-1/$withdraw", headers=AUTH)
    assert again.status_code == 200, again.text
    assert again.json() == first.json()  # the current version, as it is
    assert again.headers["etag"] == 'W/"2"'
    assert again.headers["last-modified"] == first.headers["last-modified"]
    assert len(_events(settings_home, "consent")) == events  # no second event
    # an If-Match of the current version: still the same answer
    same = client.post("/Consent/consent-1/$withdraw", headers={**AUTH, "If-Match": 'W/"2"'})
    assert same.status_code == 200 and same.headers["etag"] == 'W/"2"'
    # a Consent imported as rejected is not in force either: nothing to withdraw
    refused = consent((HKID, "K583726A"), "HKPMC", ident="consent-2", status="rejected")
    assert _post(client, refused).status_code == 201
    kept = client.post("/Consent/consent-2/$withdraw", headers=AUTH)
    assert kept.status_code == 200 and kept.json()["status"] == "rejected"
    assert kept.headers["etag"] == 'W/"1"'


def test_a_conditional_read_of_the_version_it_has_is_304_not_modified(
    client: Client, settings_home: Settings
) -> None:
    """GET /Consent/{id} answers If-None-Match / If-Modified-Since as GET
    /fhir/{type}/{id} does (304, its ETag and Last-Modified, no body, still audited),
    and GET /metadata announces it; both headers were ignored (always 200)."""
    made = _post(client, consent((HKID, "K583726A"), "HKPMC"))
    assert made.status_code == 201, made.text
    etag, modified = made.headers["etag"], made.headers["last-modified"]
    reads = len(_events(settings_home, "api-read"))
    same = client.get("/Consent/consent-1", headers={**AUTH, "If-None-Match": etag})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["etag"] == etag and same.headers["last-modified"] == modified
    assert len(_events(settings_home, "api-read")) == reads + 1  # a read all the same
    other = client.get("/Consent/consent-1", headers={**AUTH, "If-None-Match": 'W/"2"'})
    assert other.status_code == 200 and other.json() == made.json()
    after = parsedate_to_datetime(modified) + timedelta(seconds=1)  # past the version
    while datetime.now(UTC) <= after:  # a date not yet come is ignored (200)
        time.sleep(0.05)
    since = format_datetime(after, usegmt=True)
    assert (
        client.get("/Consent/consent-1", headers={**AUTH, "If-Modified-Since": since}).status_code
        == 304
    )
    later = "Fri, 01 Jan 2100 00:00:00 GMT"  # a date not yet come: ignored (200)
    assert (
        client.get("/Consent/consent-1", headers={**AUTH, "If-Modified-Since": later}).status_code
        == 200
    )
    earlier = "Thu, 01 Jan 2015 00:00:00 GMT"
    assert (
        client.get("/Consent/consent-1", headers={**AUTH, "If-Modified-Since": earlier}).status_code
        == 200
    )
    # a vread names its version already: answered in full
    vread = client.get("/Consent/consent-1/_history/1", headers={**AUTH, "If-None-Match": etag})
    assert vread.status_code == 200
    announced = client.get("/metadata").json()["rest"][0]["resource"]
    [consents] = [r for r in announced if r["type"] == "Consent"]
    assert consents["conditionalRead"] == "full-support"
