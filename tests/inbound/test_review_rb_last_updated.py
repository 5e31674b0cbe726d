"""A version's ``meta.lastUpdated`` is later than its previous version's, to the
millisecond it is written with: a conditional read (``If-Modified-Since``, a batch
entry's ``ifModifiedSince``) compares it, and the date a client sends is the one it
was answered (``Last-Modified``, ``lastModified``). A Bundle's write time is taken
before its write transaction waits for another's (``_receive.py``: SQLite's BEGIN
IMMEDIATE, PostgreSQL's advisory locks), so the version written second could carry the
earlier time; and two writes within one millisecond carried the same one. Either way a
client holding the earlier version, asking with its date, was answered 304 Not Modified:
the newer version of the record hidden."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

from gateway import Settings
from gateway.inbound import Resources
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, partner
from .test_conditional_read import _batch, _get, _stored


def _write(settings: Settings, ref: str, resource: dict[str, Any], note: str, at: Any) -> None:
    """The next version of ``ref`` as NSCH's Bundle writes it, with the time ``at`` its
    Bundle took (``apply_bundle``'s ``now``)."""
    changed = copy.deepcopy(resource)
    changed.pop("meta", None)
    changed["note"] = [{"text": note}]
    store = open_store(settings)
    try:
        with store.engine.begin() as conn:
            Resources(store).write(conn, changed, logical_id=ref.split("/")[1],
                                   partner="nsch", now=at)  # fmt: skip
    finally:
        store.close()


def _current(settings: Settings, ref: str) -> Any:
    store = open_store(settings)
    try:
        return Resources(store).read(*ref.split("/"))
    finally:
        store.close()


def test_a_version_written_after_a_later_timed_one_is_never_hidden_by_a_304(
    client: Client, signed_referral: bytes, hk_settings: Settings
) -> None:
    ref, resource = _stored(client, signed_referral)
    first = client.get(f"/fhir/{ref}", headers=partner(NSCH_TOKEN)).json()["meta"]["lastUpdated"]
    start = _current(hk_settings, ref)
    assert start is not None and first
    # Bundle A takes its time, then waits for Bundle B (a later time), which writes first
    _write(hk_settings, ref, resource, "B", start.last_updated + timedelta(seconds=2))
    seen = _get(client, ref)  # a partner reads B's version
    assert seen.json()["note"] == [{"text": "B"}]
    _write(hk_settings, ref, resource, "A", start.last_updated + timedelta(seconds=1))
    again = _get(client, ref, If_Modified_Since=seen.headers["Last-Modified"])
    assert again.status_code == 200, again.headers
    assert again.json()["note"] == [{"text": "A"}]
    batch = _batch({"url": ref, "ifModifiedSince": seen.json()["meta"]["lastUpdated"]})
    answered = client.post("/fhir", content=batch, headers=partner(NSCH_TOKEN)).json()
    assert answered["entry"][0]["response"]["status"] == "200 OK"


def test_two_versions_written_within_one_millisecond_are_never_one_304(
    client: Client, signed_referral: bytes, hk_settings: Settings
) -> None:
    ref, resource = _stored(client, signed_referral)
    start = _current(hk_settings, ref)
    assert start is not None
    at = start.last_updated.replace(microsecond=0) + timedelta(seconds=1)
    _write(hk_settings, ref, resource, "B", at)
    seen = _get(client, ref)
    _write(hk_settings, ref, resource, "A", at + timedelta(microseconds=400))
    newer = _get(client, ref)
    assert newer.json()["meta"]["lastUpdated"] > seen.json()["meta"]["lastUpdated"]
    # B was written on a whole second: its Last-Modified is its instant
    again = _get(client, ref, If_Modified_Since=seen.headers["Last-Modified"])
    assert again.status_code == 200 and again.json()["note"] == [{"text": "A"}]
    batch = _batch({"url": ref, "ifModifiedSince": seen.json()["meta"]["lastUpdated"]})
    answered = client.post("/fhir", content=batch, headers=partner(NSCH_TOKEN)).json()
    assert answered["entry"][0]["response"]["status"] == "200 OK"
