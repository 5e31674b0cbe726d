"""Conditional reads (FHIR R4 http.html#cread; RFC 9110 13.1.2-13.1.3): ``GET
/fhir/{type}/{id}`` with ``If-None-Match`` (the ``ETag`` it answered, ``W/"<version>"``,
or ``*``) or ``If-Modified-Since`` (its ``Last-Modified``) is ``304 Not Modified`` when
the stored version is that one, or was written at or before that date; a batch entry's
``request.ifNoneMatch`` / ``ifModifiedSince`` (an instant) answer the same, its
``response.status`` ``304 Not Modified``. Both were ignored (always 200, the whole
resource). A search is never conditional (its GET ignores them: 200)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.audit import AuditLog
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import NJMU2_TOKEN, NSCH_TOKEN, REFERRAL_SYSTEM, partner

SR = f"ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001"


def _stored(client: Client, signed_referral: bytes) -> tuple[str, dict[str, Any]]:
    """The referral's ServiceRequest as stored: its ``Type/id`` and its read's answer."""
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    found = client.get(f"/fhir/{SR}", headers=partner(NSCH_TOKEN)).json()
    ref = found["entry"][0]["fullUrl"].split("/fhir/")[1]
    return ref, found["entry"][0]["resource"]


def _events(settings: Settings) -> int:
    store = open_store(settings)
    try:
        return len(list(AuditLog(store).rows()))
    finally:
        store.close()


def _get(client: Client, ref: str, **headers: str) -> Any:
    asked = partner(NSCH_TOKEN) | {k.replace("_", "-"): v for k, v in headers.items()}
    return client.get(f"/fhir/{ref}", headers=asked)


def test_a_read_with_the_version_it_has_is_304_not_modified(
    client: Client, signed_referral: bytes, hk_settings: Settings
) -> None:
    ref, _ = _stored(client, signed_referral)
    first = _get(client, ref)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert etag == 'W/"1"'
    events = _events(hk_settings)
    same = _get(client, ref, If_None_Match=etag)
    assert same.status_code == 304 and same.content == b""
    assert same.headers["ETag"] == etag and same.headers["Last-Modified"] == modified
    assert _events(hk_settings) == events + 1  # still a read of the record: audited
    for matching in ('"1"', "*", 'W/"7", W/"1"'):
        assert _get(client, ref, If_None_Match=matching).status_code == 304, matching
    other = _get(client, ref, If_None_Match='W/"2"')
    assert other.status_code == 200 and other.json() == first.json()
    # If-None-Match decides when both are sent (RFC 9110 13.2.2)
    later = format_datetime(parsedate_to_datetime(modified) + timedelta(days=1), usegmt=True)
    both = _get(client, ref, If_None_Match='W/"2"', If_Modified_Since=later)
    assert both.status_code == 200


def test_a_read_modified_since_a_date_is_answered_in_full(
    client: Client, signed_referral: bytes
) -> None:
    ref, _ = _stored(client, signed_referral)
    modified = parsedate_to_datetime(_get(client, ref).headers["Last-Modified"])
    after = format_datetime(modified + timedelta(seconds=1), usegmt=True)
    while datetime.now(UTC) <= modified + timedelta(seconds=1):  # a date not yet come
        time.sleep(0.05)  # is no Last-Modified this server sent: ignored (200)
    before = format_datetime(modified - timedelta(days=1), usegmt=True)
    assert _get(client, ref, If_Modified_Since=after).status_code == 304
    assert _get(client, ref, If_Modified_Since=before).status_code == 200
    assert _get(client, ref, If_Modified_Since="not a date").status_code == 200  # ignored
    # a search is not conditional: its answer in full
    search = client.get(f"/fhir/{SR}", headers=partner(NSCH_TOKEN) | {"If-None-Match": "*"})
    assert search.status_code == 200 and len(search.json()["entry"]) == 1


def test_another_partner_learns_nothing_from_a_conditional_read(
    client: Client, signed_referral: bytes
) -> None:
    ref, _ = _stored(client, signed_referral)
    asked = partner(NJMU2_TOKEN) | {"If-None-Match": "*"}
    assert client.get(f"/fhir/{ref}", headers=asked).status_code == 404


def _batch(*requests: dict[str, Any]) -> bytes:
    entries = [{"request": {"method": "GET", **r}} for r in requests]
    return orjson.dumps({"resourceType": "Bundle", "type": "batch", "entry": entries})


def test_a_batch_entrys_conditional_read_is_answered_as_its_get(
    client: Client, signed_referral: bytes, hk_settings: Settings
) -> None:
    ref, resource = _stored(client, signed_referral)
    updated = resource["meta"]["lastUpdated"]
    earlier = datetime.fromisoformat(updated) - timedelta(milliseconds=1)
    requests = [
        {"url": ref, "ifNoneMatch": 'W/"1"'},
        {"url": ref, "ifNoneMatch": 'W/"2"'},
        {"url": ref, "ifModifiedSince": updated},
        {"url": ref, "ifModifiedSince": earlier.isoformat().replace("+00:00", "Z")},
        {"url": ref, "ifNoneMatch": 'W/"2"', "ifModifiedSince": updated},
        {"url": SR, "ifNoneMatch": "*"},
    ]
    events = _events(hk_settings)
    resp = client.post("/fhir", content=_batch(*requests), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == ["304 Not Modified", "200 OK", "304 Not Modified", "200 OK", "200 OK",
                        "200 OK"], statuses  # fmt: skip
    for n in (0, 2):
        assert "resource" not in entries[n]
        assert entries[n]["response"]["etag"] == 'W/"1"'
        assert entries[n]["response"]["lastModified"] == updated
    assert entries[1]["resource"] == resource and len(entries[5]["resource"]["entry"]) == 1
    assert _events(hk_settings) == events + len(requests)
    # the GET of the first entry's URL with its condition: the same answer
    assert _get(client, ref, If_None_Match='W/"1"').status_code == 304


def test_a_304_entry_costs_nothing_of_a_read_batchs_bound(
    client: Client, signed_referral: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 304 entry holds no resource: past MAX_READ_RESOURCES (the resources a batch's
    answers hold) it is still answered 304, never refused as too costly (400) as if it
    held the resource; one that would answer the resource is still refused."""
    ref, _ = _stored(client, signed_referral)
    monkeypatch.setattr("gateway.api._fhir.MAX_READ_RESOURCES", 1)
    requests = [
        {"url": SR},
        {"url": ref, "ifNoneMatch": 'W/"1"'},
        {"url": ref, "ifNoneMatch": 'W/"2"'},
    ]
    resp = client.post("/fhir", content=_batch(*requests), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == ["200 OK", "304 Not Modified", "400 Bad Request"], statuses
    assert "resource" not in entries[1] and entries[1]["response"]["etag"] == 'W/"1"'
    issue = entries[2]["response"]["outcome"]["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.too-costly"
