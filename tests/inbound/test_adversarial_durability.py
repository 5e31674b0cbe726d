"""Adversarial review of POST /fhir: nothing acknowledged is lost or doubled. The
answer goes only after the commit, so a crash between the commit and the answer
leaves the Bundle stored and its resend gets the stored answer; a crash inside the
transaction leaves nothing; two resends racing past the look-up for an earlier copy
store one copy and give both the same answer; a transaction naming one resource twice
is refused rather than stored as two."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.inbound import Inbound, Referrals, bundles
from gateway.signing import sign_bundle
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, NOTHING, NSCH_TOKEN, counts, partner, signer


def _stored_answer(settings: Settings) -> Any:
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            return orjson.loads(conn.execute(sa.select(bundles.c.response)).scalar_one())
    finally:
        store.close()


def _tasks(client: Client) -> list[dict[str, Any]]:
    return [e["resource"] for e in client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]]


class _Crash(Exception):
    pass


def test_a_crash_after_the_commit_loses_nothing_and_the_resend_gets_the_answer(
    client: Client, hk_settings: Settings, signed_referral: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = Inbound._store

    def store_then_crash(self: Inbound, *args: Any, **kwargs: Any) -> Any:
        stored(self, *args, **kwargs)  # committed
        raise _Crash  # the process dies before the answer leaves

    monkeypatch.setattr(Inbound, "_store", store_then_crash)
    with pytest.raises(_Crash):
        client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    monkeypatch.undo()
    after_crash = counts(hk_settings)
    assert after_crash["inbound_bundles"] == 1 and after_crash["inbound_resources"] > 0
    resend = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert resend.status_code == 200
    assert resend.json() == _stored_answer(hk_settings)  # the answer of the commit
    assert counts(hk_settings) == after_crash
    assert len(_tasks(client)) == 1


def test_a_crash_inside_the_transaction_stores_nothing_and_the_resend_applies(
    client: Client, hk_settings: Settings, signed_referral: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(self: Referrals, *args: Any, **kwargs: Any) -> Any:
        raise _Crash  # after the entries were written, before the commit

    monkeypatch.setattr(Referrals, "on_received", crash)
    with pytest.raises(_Crash):
        client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    monkeypatch.undo()
    assert {k: v for k, v in counts(hk_settings).items() if k in NOTHING} == NOTHING
    resend = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert resend.status_code == 200
    assert [t["status"] for t in _tasks(client)] == ["requested"]


def test_two_resends_racing_store_one_copy_and_answer_alike(
    client: Client, hk_settings: Settings, signed_referral: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # both requests look for an earlier copy before either stores (a barrier holds the
    # first until the second has looked too): the loser's insert hits the dedup key
    looked = threading.Barrier(2, timeout=30)
    earlier = Inbound._earlier
    first_looks = threading.local()
    looks: list[bool] = []

    def look_together(self: Inbound, dedup: str) -> Any:
        found = earlier(self, dedup)
        looks.append(found is not None)
        if not getattr(first_looks, "done", False):
            first_looks.done = True
            looked.wait()
        return found

    monkeypatch.setattr(Inbound, "_earlier", look_together)
    answers: list[Any] = []

    def send() -> None:
        answers.append(client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)))

    threads = [threading.Thread(target=send) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json() == answers[1].json() == _stored_answer(hk_settings)
    assert counts(hk_settings)["inbound_bundles"] == 1
    assert len(_tasks(client)) == 1
    assert looks == [False, False, True]  # the loser found the winner's after its insert


@pytest.mark.parametrize("twice", [3, 9], ids=["conditional-create", "conditional-update"])
def test_a_transaction_naming_one_resource_twice_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path, twice: int
) -> None:
    # the Practitioner (POST ifNoneExist) or the ServiceRequest (PUT ?identifier=) twice:
    # both entries were planned against the store before the Bundle and both created,
    # two resources under one identifier, and every later condition on it was a 412
    bundle = copy.deepcopy(referral)
    again = copy.deepcopy(bundle["entry"][twice])
    again["fullUrl"] = "urn:uuid:11111111-2222-4333-8444-555555555556"
    bundle["entry"].append(again)
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.bad-entry"
    assert issue["expression"] == ["Bundle.entry[10].request"]
    assert counts(hk_settings)["inbound_resources"] == 0
