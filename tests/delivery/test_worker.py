"""The worker against a mocked partner (respx): every outcome of a send, what each
leaves in the outbox (state, the partner's answer, every transition), order per
patient, one patient's failures never blocking another's, and the breaker."""

from __future__ import annotations

import random
import socket
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
import respx

from gateway.alerts import observe
from gateway.audit import AuditLog
from gateway.delivery import Deliverer, DeliveryConfig, Outbox, UnsentHold
from gateway.partners import Auth, Partner
from gateway.store import Incoming, Store
from tests.conftest import REPO

from .conftest import (
    BASE,
    CONFIG,
    ORDERS,
    PARTNER,
    POST_URL,
    Clock,
    answer_checks,
    bundle,
    response,
    searchset,
)

OUTCOME = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "invalid", "diagnostics": "ServiceRequest.intent"}],
}


def path(outbox: Outbox, row: int) -> list[tuple[str | None, str]]:
    return [(e.from_state, e.to_state) for e in outbox.events(row)]


def sent(route: respx.Route) -> list[str]:
    """The ServiceRequest status of each request the route received, in order."""
    out = []
    for call in route.calls:
        body = orjson.loads(call.request.content)
        out += [e["resource"]["status"] for e in body["entry"] if e["resource"].get("status")]
    return out


def test_2xx_with_every_entry_2xx_is_delivered(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201 Created"))
    row, new = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    assert new and deliverer.run_once() == 1
    record = outbox.require(row)
    assert record.state == "delivered" and record.part == 1 and post.call_count == 1
    assert path(outbox, row) == [
        (None, "pending"),
        ("pending", "sending"),
        ("sending", "delivered"),
    ]
    request = post.calls[0].request
    assert request.headers["content-type"] == "application/fhir+json"
    assert orjson.loads(request.content) == bundle("P1", "O1")  # exactly as it left


def test_4xx_is_dead_at_once_with_the_partners_operation_outcome(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).respond(400, json=OUTCOME)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.advance(3600)
    deliverer.run_once()  # nothing more: no retry of a refusal
    record = outbox.require(row)
    assert record.state == "dead" and post.call_count == 1
    assert record.last_status == 400 and record.last_error == "delivery.partner-rejected"
    assert orjson.loads(record.last_response or "") == OUTCOME
    assert path(outbox, row)[-1] == ("sending", "dead")
    assert outbox.events(row)[-1].status == 400


REFUSED = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "login", "diagnostics": "Unauthorized"}],
}


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_hold_the_record_until_released(
    status: int, outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(status, json=REFUSED),
        httpx.Response(200, json=response("201", "201")),
    ]
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.advance(3600)
    deliverer.run_once()  # held: not sent again, not given up, never dead
    record = outbox.require(row)
    assert record.state == "held" and post.call_count == 1
    assert (record.last_status, record.last_error) == (status, "delivery.credentials-refused")
    assert orjson.loads(record.last_response or "") == REFUSED
    reason = outbox.events(row)[-1].reason
    assert path(outbox, row)[-1] == ("sending", "held") and outbox.events(row)[-1].status == status
    assert reason.startswith("delivery.credentials-refused: partner hkpmc refused")
    assert f"HTTP {status}" in reason and f"gateway outbox release {row}" in reason
    # The existing alerts see it: a held row is queued and ages (oldest_age, queue_depth).
    seen = observe(outbox.store, clock())
    assert seen[("hkpmc", "queue_depth")] == 1 and seen[("hkpmc", "oldest_age")] >= 3600
    outbox.release(row, "token renewed")  # the token fixed: a person releases it
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 2


def test_refused_credentials_while_asking_hold_the_record(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    partner_api.get(BASE + "/Patient").respond(401, json=REFUSED)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "held" and record.last_error == "delivery.credentials-refused"
    assert post.call_count == 1 and "answered 401" in outbox.events(row)[-1].reason


def test_refused_credentials_open_the_breaker_instead_of_holding_every_row(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).respond(401, json=REFUSED)
    rows = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(6)]
    deliverer.run_once()
    states = [outbox.require(r).state for r in rows]
    assert states == ["held"] * 3 + ["pending"] * 3  # threshold 3, then the breaker is open
    assert post.call_count == 3


def test_no_token_is_retried_then_held_never_dead(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HKPMC_TOKEN_FOR_TESTS", raising=False)
    tokenless = Partner("hkpmc", BASE, auth=Auth(type="bearer", token_env="HKPMC_TOKEN_FOR_TESTS"))
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    row, _ = outbox.enqueue(tokenless, bundle("P1", "O1"))
    with Deliverer(outbox, {"hkpmc": tokenless}, CONFIG, rng=random.Random(7)) as deliverer:
        for _ in range(CONFIG.max_attempts * 3):
            deliverer.run_once()
            clock.advance(CONFIG.breaker_cooldown + CONFIG.backoff_cap)
        record = outbox.require(row)
        assert record.state == "held" and record.last_error == "delivery.token-file"
        assert post.call_count == 0 and record.attempts == CONFIG.max_attempts
        retried = [e.reason for e in outbox.events(row) if e.to_state == "retrying"]
        assert retried and all("no credentials (delivery.token-file)" in r for r in retried)
        assert outbox.events(row)[-1].reason.startswith("delivery.token-file: no credentials")
        monkeypatch.setenv("HKPMC_TOKEN_FOR_TESTS", "renewed-token")
        outbox.release(row, "token set")
        deliverer.run_once()
    assert outbox.require(row).state == "delivered"
    assert post.calls[0].request.headers["authorization"] == "Bearer renewed-token"


def test_a_long_answer_is_kept_truncated(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    long = {**OUTCOME, "issue": [{**OUTCOME["issue"][0], "diagnostics": "x" * 50_000}]}
    partner_api.post(POST_URL).respond(422, json=long)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    kept = outbox.require(row).last_response or ""
    assert kept.endswith("…[truncated]") and len(kept) < 17_000


def test_5xx_is_retried_after_a_backoff_then_delivered(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(503, json=OUTCOME),
        httpx.Response(200, json=response("200", "200")),
    ]
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    start = clock.now
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.last_error == "delivery.partner-unavailable"
    assert start <= record.next_at <= start + timedelta(seconds=CONFIG.backoff_base)
    clock.now = record.next_at
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 2
    assert path(outbox, row)[1:] == [
        ("pending", "sending"),
        ("sending", "retrying"),
        ("retrying", "sending"),
        ("sending", "delivered"),
    ]


@pytest.mark.parametrize(
    "header", ["120", "Sat, 05 Dec 2026 08:02:00 GMT"], ids=["seconds", "http-date"]
)
def test_429_waits_what_retry_after_says(
    header: str, outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(429, headers={"Retry-After": header}, json=OUTCOME),
        httpx.Response(200, json=response("200", "200")),
    ]
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    assert outbox.require(row).next_at == clock.now + timedelta(seconds=120)
    clock.advance(119)
    assert deliverer.run_once() == 0 and post.call_count == 1  # not before
    clock.advance(1)
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 2


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("[Errno -2] Name or service not known"),
        httpx.PoolTimeout("no connection available"),
    ],
    ids=["connect-timeout", "dns", "pool"],
)
def test_nothing_sent_is_retried_without_asking(
    failure: Exception,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [failure, httpx.Response(200, json=response("200", "200"))]
    search = partner_api.get(url__startswith=BASE)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.last_error == "delivery.unreachable"
    clock.now = record.next_at
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and search.call_count == 0


def test_connection_refused_by_a_real_closed_port(outbox: Outbox, clock: Clock) -> None:
    with socket.socket() as s:  # a port nobody listens on: the kernel refuses
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = Partner("hkpmc", f"http://127.0.0.1:{port}/fhir")
    row, _ = outbox.enqueue(closed, bundle("P1", "O1"))
    with Deliverer(outbox, {"hkpmc": closed}, CONFIG, clock=clock) as deliverer:
        deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.last_error == "delivery.unreachable"
    assert "ConnectError" in outbox.events(row)[-1].reason


def _held_by_partner(status: str) -> list[dict[str, Any]]:
    """What the partner holds after applying bundle(P1, O1, status): its ids, meta, and
    references rewritten to Type/id."""
    sent = bundle("P1", "O1", status)
    patient = {**sent["entry"][0]["resource"], "id": "p-1", "meta": {"versionId": "a"}}
    order = {
        **sent["entry"][1]["resource"],
        "id": "sr-1",
        "meta": {"versionId": "b", "lastUpdated": "2026-12-05T08:00:00Z"},
        "subject": {"reference": "Patient/p-1"},
    }
    return [patient, order]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        httpx.WriteTimeout("timed out"),
    ],
    ids=["read-timeout", "closed-mid-answer", "reset", "write-timeout"],
)
def test_ambiguous_then_the_partner_has_it_is_delivered_without_a_resend(
    failure: Exception,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=failure)
    patient, order = _held_by_partner("active")
    patients = partner_api.get(BASE + "/Patient").respond(200, json=searchset(patient))
    orders = partner_api.get(BASE + "/ServiceRequest").respond(200, json=searchset(order))
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "waiting" and record.last_error == "delivery.ambiguous"
    assert patients.call_count == 0  # not asked at once: a slow partner may still be at it
    assert deliverer.run_once() == 0
    clock.now = record.next_at
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 1  # never resent
    query = orders.calls[0].request.url.params["identifier"]
    assert query == f"{ORDERS}|O1"  # searched by the entry's own condition
    assert path(outbox, row)[1:] == [
        ("pending", "sending"),
        ("sending", "waiting"),
        ("waiting", "delivered"),
    ]


@pytest.mark.parametrize("held", ["absent", "other-content"])
def test_ambiguous_then_the_partner_lacks_it_is_sent_again(
    held: str, outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.ReadTimeout("timed out"),
        httpx.Response(200, json=response("200", "200")),
    ]
    patient, order = _held_by_partner("revoked")  # an older version of the order
    partner_api.get(BASE + "/Patient").respond(200, json=searchset(patient))
    orders = searchset() if held == "absent" else searchset(order)
    partner_api.get(BASE + "/ServiceRequest").respond(200, json=orders)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1", "active"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 2
    assert path(outbox, row)[1:] == [
        ("pending", "sending"),
        ("sending", "waiting"),
        ("waiting", "sending"),
        ("sending", "delivered"),
    ]
    assert "sending part 1 again" in outbox.events(row)[3].reason


def test_ambiguous_and_the_partner_cannot_be_asked_waits_again(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    partner_api.get(BASE + "/Patient").mock(side_effect=httpx.ConnectError("refused"))
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "waiting" and post.call_count == 1  # still no blind resend
    assert path(outbox, row)[-1] == ("waiting", "waiting")
    assert "not asked (" in outbox.events(row)[-1].reason


def test_ambiguous_with_an_unconditional_entry_is_held(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    plain = bundle("P1", "O1")
    plain["entry"][0]["request"] = {"method": "POST", "url": "Patient"}
    row, _ = outbox.enqueue(PARTNER, plain)
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "held" and record.last_error == "delivery.unverifiable"
    assert post.call_count == 1


def test_a_2xx_with_a_failed_entry_is_not_delivered(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    # A partner without atomic transactions: 200 with the failures in the entries.
    partner_api.post(POST_URL).respond(200, json=response("201", "400 Bad Request"))
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "dead" and record.last_error == "delivery.entry-failed"


def test_it_gives_up_after_max_attempts(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).respond(500, json=OUTCOME)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    for _ in range(10):
        deliverer.breakers.clear()  # the breaker is tested on its own
        deliverer.run_once()
        clock.advance(CONFIG.backoff_cap)
    record = outbox.require(row)
    assert record.state == "dead" and record.last_error == "delivery.gave-up"
    assert post.call_count == CONFIG.max_attempts
    assert "4 attempts" in outbox.events(row)[-1].reason


def test_parts_go_in_order_each_after_the_previous_succeeded(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    split = Partner("hkpmc", BASE, max_entries=2)
    record = bundle("P1", "O1")
    record["entry"].insert(
        1,
        {
            "fullUrl": "urn:uuid:prac-1",
            "resource": {
                "resourceType": "Practitioner",
                "identifier": [{"system": "urn:x", "value": "D1"}],
            },
            "request": {
                "method": "POST",
                "url": "Practitioner",
                "ifNoneExist": "identifier=urn:x|D1",
            },
        },
    )
    record["entry"][2]["resource"]["requester"] = {"reference": "urn:uuid:prac-1"}
    assert len(split.split(record)) == 2
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(200, json=response("201", "201")),
        httpx.Response(503, json=OUTCOME),
        httpx.Response(200, json=response("200")),
    ]
    row, _ = outbox.enqueue(split, record)
    with Deliverer(outbox, {"hkpmc": split}, CONFIG, clock=clock, rng=random.Random(3)) as d:
        d.run_once()
        assert outbox.require(row).state == "retrying" and outbox.require(row).part == 1
        clock.advance(CONFIG.backoff_cap)
        d.run_once()
    bodies = [orjson.loads(c.request.content) for c in post.calls]
    assert bodies[0] == split.split(record)[0]
    assert bodies[1] == bodies[2] == split.split(record)[1]  # part 1 never sent again
    assert outbox.require(row).state == "delivered"
    assert path(outbox, row)[1:] == [
        ("pending", "sending"),
        ("sending", "sending"),
        ("sending", "retrying"),
        ("retrying", "sending"),
        ("sending", "delivered"),
    ]


def test_a_patients_later_record_never_overtakes_an_earlier_one(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(503, json=OUTCOME),
        httpx.Response(200, json=response("200", "200")),
        httpx.Response(200, json=response("200", "200")),
    ]
    first, _ = outbox.enqueue(PARTNER, bundle("P1", "O1", "active"))  # a referral
    second, _ = outbox.enqueue(PARTNER, bundle("P1", "O1", "revoked"))  # its cancellation
    deliverer.run_once()
    assert outbox.require(second).state == "pending" and post.call_count == 1
    clock.advance(CONFIG.backoff_cap)
    while deliverer.run_once():
        pass
    assert sent(post) == ["active", "active", "revoked"]
    assert outbox.require(first).state == outbox.require(second).state == "delivered"


def test_a_dead_record_keeps_its_patients_later_records_back(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    partner_api.post(POST_URL).respond(400, json=OUTCOME)
    outbox.enqueue(PARTNER, bundle("P1", "O1", "active"))
    later, _ = outbox.enqueue(PARTNER, bundle("P1", "O1", "revoked"))
    while deliverer.run_once():
        pass
    assert outbox.require(later).state == "pending"  # until a person decides (next session)


def test_one_failing_patient_never_blocks_another(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        patient = orjson.loads(request.content)["entry"][0]["resource"]["identifier"][0]["value"]
        if patient == "P1":
            return httpx.Response(503, json=OUTCOME)
        return httpx.Response(200, json=response("200", "200"))

    partner_api.post(POST_URL).mock(side_effect=answer)
    failing, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    others = [outbox.enqueue(PARTNER, bundle("P2", f"O2-{n}"))[0] for n in range(2)]
    others.append(outbox.enqueue(PARTNER, bundle("P3", "O3"))[0])
    for _ in range(3):
        deliverer.run_once()
        clock.advance(CONFIG.backoff_base)
    assert outbox.require(failing).state == "retrying"
    assert [outbox.require(r).state for r in others] == ["delivered"] * 3


def test_the_breaker_stops_requests_to_a_failing_partner_then_probes_once(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).respond(503, json=OUTCOME)
    rows = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(6)]
    deliverer.run_once()
    assert post.call_count == CONFIG.breaker_threshold  # then open: the rest untouched
    assert [outbox.require(r).state for r in rows[3:]] == ["pending"] * 3
    clock.advance(CONFIG.backoff_cap)  # every row due, but the breaker is still open
    assert deliverer.run_once() == 0 and post.call_count == 3
    clock.advance(CONFIG.breaker_cooldown)
    deliverer.run_once()
    assert post.call_count == 4  # half-open: one probe, which failed: open again
    assert deliverer.breaker("hkpmc").state(clock.now) == "open"
    post.respond(200, json=response("200", "200"))
    clock.advance(CONFIG.breaker_cooldown)
    while deliverer.run_once():
        clock.advance(CONFIG.backoff_cap)
    assert deliverer.breaker("hkpmc").state(clock.now) == "closed"
    assert [outbox.require(r).state for r in rows] == ["delivered"] * 6


def test_a_record_left_sending_by_a_killed_worker_is_asked_about_first(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    # The worker claimed the row and moved it to sending, then the process died.
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    record = outbox.require(row)
    assert outbox.claim(record, clock.now, CONFIG.lease)
    outbox.move(row, "pending", "sending", "sending", now=clock.now, lease=CONFIG.lease)
    post = partner_api.post(POST_URL).respond(200, json=response("200", "200"))
    patient, order = _held_by_partner("active")
    partner_api.get(BASE + "/Patient").respond(200, json=searchset(patient))
    partner_api.get(BASE + "/ServiceRequest").respond(200, json=searchset(order))
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, clock=clock) as restarted:
        assert restarted.run_once() == 0  # its lease still runs
        clock.advance(CONFIG.lease.total_seconds())
        restarted.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 0
    assert path(outbox, row)[2:] == [("sending", "waiting"), ("waiting", "delivered")]
    assert outbox.events(row)[2].reason.startswith("delivery.interrupted")


def test_a_record_for_an_unknown_partner_is_held(outbox: Outbox, clock: Clock) -> None:
    row, _ = outbox.enqueue(Partner("gone", BASE), bundle("P1", "O1"))
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, clock=clock) as deliverer:
        deliverer.run_once()
    assert outbox.require(row).state == "held"
    assert outbox.events(row)[-1].reason.startswith("delivery.unknown-partner")


def test_the_same_bundle_queued_twice_is_one_row(outbox: Outbox) -> None:
    first = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    again = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    other = outbox.enqueue(Partner("nsch", BASE), bundle("P1", "O1"))
    assert first[1] and again == (first[0], False) and other[1]
    assert outbox.require(first[0]).order_key == "urn:oid:1.3.6.1.4.1.99999.1.1.2|P1"


def test_stats_give_depth_and_the_oldest_waiting_per_partner(outbox: Outbox, clock: Clock) -> None:
    outbox.enqueue(PARTNER, bundle("P1", "O1"), now=clock.now)
    outbox.enqueue(PARTNER, bundle("P2", "O2"), now=clock.now + timedelta(seconds=30))
    stats = outbox.stats(clock.now + timedelta(seconds=90))
    assert stats == [
        {
            "partner": "hkpmc",
            "states": {"pending": 2},
            "depth": 2,
            "oldest_waiting_at": "2026-12-05T08:00:00.000Z",
            "oldest_waiting_seconds": 90.0,
            "paused_until": None,
        }
    ]


def test_a_partner_pause_is_kept_for_every_worker_and_only_ever_extended(
    outbox: Outbox, clock: Clock
) -> None:
    """Retry-After kept in the store (``partner_pauses``), on both backends: a later
    pause extends the one kept, an earlier one never shortens it, and one past is no
    pause at all; ``outbox stats`` says until when."""
    outbox.enqueue(PARTNER, bundle("P1", "O1"), now=clock.now)
    later, earlier = clock.now + timedelta(seconds=120), clock.now + timedelta(seconds=30)
    assert outbox.paused_partners(clock.now) == {}
    outbox.pause_partner("hkpmc", BASE, later, clock.now)
    outbox.pause_partner("hkpmc", BASE, earlier, clock.now)  # a second worker, a shorter ask
    outbox.pause_partner("nsch", BASE, earlier, clock.now)
    assert outbox.paused_partners(clock.now) == {"hkpmc": (later, BASE), "nsch": (earlier, BASE)}
    assert outbox.stats(clock.now)[0]["paused_until"] == "2026-12-05T08:02:00.000Z"
    outbox.pause_partner("hkpmc", BASE, later + timedelta(seconds=5), clock.now)
    assert outbox.paused_partners(clock.now)["hkpmc"] == (later + timedelta(seconds=5), BASE)
    assert outbox.paused_partners(later + timedelta(seconds=5)) == {}  # over


def test_a_partner_moved_to_another_base_is_not_held_by_the_old_ones_pause(
    outbox: Outbox, clock: Clock
) -> None:
    """The old endpoint asked for 10 minutes of quiet; the partner then moved
    (partners.yaml: a new base URL). The new endpoint is not paused by it, and a pause
    the new one asks for replaces the old one's, even a shorter one."""
    moved = Partner("hkpmc", "https://fhir2.hkpmc.example.hk/fhir/R4")
    row, _ = outbox.enqueue(moved, bundle("P1", "O1"), now=clock.now)
    outbox.pause_partner("hkpmc", BASE, clock.now + timedelta(seconds=600), clock.now)
    with respx.mock(assert_all_mocked=True) as router:
        answer_checks(router)
        router.post(moved.base + "/").respond(200, json=response("201 Created", "201 Created"))
        with Deliverer(outbox, {"hkpmc": moved}, CONFIG, clock=clock) as deliverer:
            assert deliverer.run_once() == 1
    assert outbox.require(row).state == "delivered"
    shorter = clock.now + timedelta(seconds=5)
    outbox.pause_partner("hkpmc", moved.base, shorter, clock.now)
    assert outbox.paused_partners(clock.now) == {"hkpmc": (shorter, moved.base)}


def test_settings_sized_client_timeouts(outbox: Outbox) -> None:
    config = DeliveryConfig(connect_timeout=1.5, read_timeout=9, write_timeout=4, pool_timeout=2)
    with Deliverer(outbox, {"hkpmc": PARTNER}, config) as deliverer:
        timeout = deliverer.client(PARTNER).timeout
        assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (1.5, 9, 4, 2)
        assert deliverer.client(PARTNER) is deliverer.client(PARTNER)  # one pool per partner


def test_a_partner_with_an_open_breaker_never_crowds_out_another(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    other = Partner("nsch", "https://fhir.nsch.example.cn/fhir")
    partner_api.post(POST_URL).respond(503, json=OUTCOME)
    nsch = partner_api.post(other.base + "/").respond(200, json=response("200", "200"))
    down = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(6)]
    up, _ = outbox.enqueue(other, bundle("P9", "O9"))
    partners = {"hkpmc": PARTNER, "nsch": other}
    with Deliverer(outbox, partners, CONFIG, rng=random.Random(4)) as deliverer:
        deliverer.run_once(limit=3)  # three failures: hkpmc's breaker opens
        clock.advance(CONFIG.backoff_cap)
        # 6 hkpmc rows are due before the nsch one; a page of 3 still reaches it.
        deliverer.run_once(limit=3)
    assert outbox.require(up).state == "delivered" and nsch.call_count == 1
    assert [outbox.require(r).state for r in down[3:]] == ["pending"] * 3


def test_a_record_whose_handling_fails_never_stops_the_others(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if b'"P1"' in request.content:
            raise RuntimeError("a fault of the gateway itself")
        return httpx.Response(200, json=response("200", "200"))

    partner_api.post(POST_URL).mock(side_effect=answer)
    broken, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    fine, _ = outbox.enqueue(PARTNER, bundle("P2", "O2"))
    deliverer.run_once()
    assert outbox.require(fine).state == "delivered"
    assert outbox.require(broken).state == "sending"  # held by its lease, then asked
    clock.advance(CONFIG.lease.total_seconds())
    partner_api.get(url__startswith=BASE).respond(200, json=searchset())
    deliverer.run_once()
    assert path(outbox, broken)[2] == ("sending", "waiting")


def test_an_ambiguous_record_held_for_a_partner_gone_is_asked_about_once_released(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    # A send was ambiguous (the row waits to ask the partner); then the partner left the
    # partners' files (reloaded while running: a hand edit), so the row was held. Back in
    # the files and released, the partner is asked first: never a blind second send.
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    record = outbox.require(row)
    assert outbox.claim(record, clock.now, CONFIG.lease)
    outbox.move(row, "pending", "sending", "sending", now=clock.now, lease=CONFIG.lease)
    clock.advance(CONFIG.lease.total_seconds())
    assert outbox.recover(clock.now) == 1  # sending -> waiting: ask first
    with Deliverer(outbox, {}, CONFIG, clock=clock) as without:
        without.run_once()
    assert outbox.require(row).state == "held"
    assert outbox.require(row).last_error == "delivery.unknown-partner"
    post = partner_api.post(POST_URL).respond(200, json=response("200", "200"))
    patient, order = _held_by_partner("active")
    partner_api.get(BASE + "/Patient").respond(200, json=searchset(patient))
    partner_api.get(BASE + "/ServiceRequest").respond(200, json=searchset(order))
    outbox.release(row, "hkpmc is back in partners.yaml")
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, clock=clock) as back:
        back.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 0
    assert path(outbox, row)[-2:] == [("held", "waiting"), ("waiting", "delivered")]


def test_records_held_for_a_partner_gone_are_queued_again_once_it_is_back(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    # hkpmc left the partners' files while three of its records waited: one queued, one
    # whose send was ambiguous (waiting to ask), so both were held for the unknown
    # partner; a third is held for refused credentials. Back in the files (a restart
    # here; a reload in test_partners_reload.py), the first two return to the queue
    # without a person (the ambiguous one asked first, never sent blindly); the third
    # still waits for a person.
    ambiguous, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    queued, _ = outbox.enqueue(PARTNER, bundle("P2", "O2"))
    refused, _ = outbox.enqueue(PARTNER, bundle("P3", "O3"))
    assert outbox.claim(outbox.require(ambiguous), clock.now, CONFIG.lease)
    outbox.move(ambiguous, "pending", "sending", "sending", now=clock.now, lease=CONFIG.lease)
    clock.advance(CONFIG.lease.total_seconds())
    assert outbox.recover(clock.now) == 1  # sending -> waiting: ask first
    outbox.move(
        refused,
        "pending",
        "held",
        "delivery.credentials-refused: HTTP 401",
        now=clock.now,
        last_error="delivery.credentials-refused",
    )
    with Deliverer(outbox, {}, CONFIG, clock=clock) as without:
        without.run_once()
    for row in (queued, ambiguous):
        assert outbox.require(row).state == "held"
        assert outbox.require(row).last_error == "delivery.unknown-partner"

    post = partner_api.post(POST_URL).respond(200, json=response("200", "200"))
    patient, order = _held_by_partner("active")  # the ambiguous send (P1's) arrived
    partner_api.get(BASE + "/Patient").respond(200, json=searchset(patient))
    partner_api.get(BASE + "/ServiceRequest").respond(200, json=searchset(order))
    audit = AuditLog(outbox.store)
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, clock=clock, audit=audit) as back:
        back.run_once()
    assert path(outbox, queued)[-3:] == [
        ("held", "pending"),
        ("pending", "sending"),
        ("sending", "delivered"),
    ]
    assert path(outbox, ambiguous)[-2:] == [("held", "waiting"), ("waiting", "delivered")]
    assert post.call_count == 1  # the queued record's; the ambiguous one was found there
    said = outbox.events(queued)[-3].reason
    assert said == "release: delivery.unknown-partner: partner hkpmc is configured again"
    assert outbox.require(refused).state == "held"
    assert outbox.require(refused).last_error == "delivery.credentials-refused"
    found = [e.resource() for e in audit.rows()]
    released = [e for e in found if e.get("outcomeDesc") == said]
    assert len(released) == 2
    assert all(not any(a["requestor"] for a in e["agent"]) for e in released)  # no person


def test_a_consent_withdrawn_while_its_partner_was_gone_keeps_the_record_held(
    store: Store, outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    # A record held because hkpmc left the partners' files, never sent; the patient's
    # consent is then withdrawn (the policy holds what is not sent yet: UnsentHold, in
    # the withdrawal's transaction). hkpmc back, the record is not queued again by the
    # worker: the policy holds it (a release decides again), nothing is sent.
    raw = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
    message = store.receive(Incoming(raw, "cli")).id
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"), message_id=message)
    with Deliverer(outbox, {}, CONFIG, clock=clock) as without:
        without.run_once()
    assert outbox.require(row).last_error == "delivery.unknown-partner"
    with store.engine.execution_options(write=True).begin() as conn:
        held = UnsentHold(store, outbox).hold_unsent(conn, [(message, "hkpmc")], "withdrawn")
    assert held == 1
    post = partner_api.post(POST_URL).respond(200, json=response("200", "200"))
    with Deliverer(outbox, {"hkpmc": PARTNER}, CONFIG, clock=clock) as back:
        back.run_once()
    assert post.call_count == 0
    assert outbox.require(row).state == "held"
    assert outbox.require(row).last_error == "policy.held"
