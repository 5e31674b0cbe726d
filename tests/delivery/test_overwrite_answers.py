"""The partner's answer to the overwrite check (docs/delivery.md, "No overwrite of
another patient's record"), one HTTP outcome at a time (respx): only a batch-response
of one 2xx searchset per search is an answer; anything else means what it would for a
send, and the record is never written unchecked."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import respx

from gateway.delivery import Deliverer, Outbox

from .conftest import BASE, MRN, ORDERS, PARTNER, POST_URL, bundle, response, searchset

CHECK = b'"method":"GET"'


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def _answer(*found: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [{"response": {"status": "200"}, "resource": searchset(*f)} for f in found],
    }


def _run(api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox, **check: Any) -> Any:
    asked = api.post(POST_URL, content__contains=CHECK).mock(**check)
    sent = api.post(POST_URL).respond(200, json=response("201", "201"))
    row = outbox.enqueue(PARTNER, bundle("P1", "O1", name="李小明"))[0]
    deliverer.run_once()
    return outbox.require(row), asked, sent


ORDER = {"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order"}


@pytest.mark.parametrize(
    ("check", "code"),
    [
        ({"return_value": httpx.Response(200, json=response("200", "200"))}, "unchecked"),
        ({"return_value": httpx.Response(200, text="<html>ok</html>")}, "unchecked"),
        (
            {"return_value": httpx.Response(200, json={**_answer([], []), "entry": [{}]})},
            "unchecked",
        ),
        (
            {
                "return_value": httpx.Response(
                    200,
                    json={
                        **_answer([], []),
                        "entry": [
                            {"response": {"status": "400"}},
                            {"response": {"status": "200"}, "resource": searchset()},
                        ],
                    },
                )
            },
            "unchecked",
        ),
        ({"return_value": httpx.Response(503, json={"resourceType": "OperationOutcome"})}, "503"),
        ({"side_effect": httpx.ReadTimeout("slow")}, "unchecked"),
        ({"side_effect": httpx.ConnectError("down")}, "unreachable"),
    ],
    ids=["transaction-response", "html", "entry-missing", "search-refused", "503", "lost", "down"],
)
def test_no_answer_to_the_check_is_retried_and_nothing_sent(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox, check: Any, code: str
) -> None:
    row, asked, sent = _run(api, deliverer, outbox, **check)
    assert asked.call_count == 1 and sent.call_count == 0
    expected = {
        "unchecked": "delivery.overwrite-unchecked",
        "503": "delivery.partner-unavailable",
        "unreachable": "delivery.unreachable",
    }[code]
    assert (row.state, row.last_error) == ("retrying", expected)
    assert "overwrite check" in outbox.events(row.id)[-1].reason


def test_refused_credentials_hold_as_for_a_send(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox
) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    row, _, sent = _run(api, deliverer, outbox, return_value=httpx.Response(403, json=outcome))
    assert (row.state, row.last_error, row.last_status, sent.call_count) == (
        "held",
        "delivery.credentials-refused",
        403,
        0,
    )


@pytest.mark.parametrize("other", [True, False], ids=["other-patient", "same-patient"])
def test_a_partner_refusing_the_batch_is_asked_by_plain_searches(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox, other: bool
) -> None:
    """Batch is optional in R4 (another gateway's inbound endpoint takes writes only):
    refused, each search is a GET of its own, and the partner is not asked by batch
    again."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    subject = "Patient/someone-else" if other else "Patient/p-ours"
    order = api.get(f"{BASE}/ServiceRequest").respond(
        json=searchset({**ORDER, "subject": {"reference": subject}})
    )
    patient = api.get(f"{BASE}/Patient").respond(
        json=searchset({"resourceType": "Patient", "id": "p-ours"})
    )
    refused = httpx.Response(422, json=outcome)
    row, asked, sent = _run(api, deliverer, outbox, return_value=refused)
    assert (order.call_count, patient.call_count) == (1, 1)
    assert order.calls[0].request.url.params["identifier"] == f"{ORDERS}|O1"
    assert patient.calls[0].request.url.params["identifier"] == f"{MRN}|P1"
    assert (row.state, sent.call_count) == (("held", 0) if other else ("delivered", 1))
    outbox.enqueue(PARTNER, bundle("P9", "O9", name="陳大文"))
    deliverer.run_once()
    assert asked.call_count == 1 and order.call_count == 2  # no batch again


def test_a_plain_search_refused_is_a_refusal_as_for_a_send(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox
) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
    api.get(f"{BASE}/ServiceRequest").respond(400, json=outcome)
    row, _, sent = _run(api, deliverer, outbox, return_value=httpx.Response(405, json=outcome))
    assert (row.state, row.last_error, sent.call_count) == ("dead", "delivery.partner-rejected", 0)
    assert "overwrite check" in outbox.events(row.id)[-1].reason


def test_an_order_of_another_patients_subject_at_the_partner_holds_the_record(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox
) -> None:
    theirs = {**ORDER, "subject": {"reference": "Patient/someone-else"}}
    ours = {"resourceType": "Patient", "id": "p-ours"}
    answer = httpx.Response(200, json=_answer([theirs], [ours]))
    row, asked, sent = _run(api, deliverer, outbox, return_value=answer)
    assert (row.state, row.last_error, sent.call_count) == (
        "held",
        "delivery.identifier-other-patient",
        0,
    )
    searches = [e["request"]["url"] for e in orjson.loads(asked.calls[0].request.content)["entry"]]
    assert searches == [
        "ServiceRequest?identifier=https://fhir.lax2.example.cn/sid/accession|O1",
        f"Patient?identifier={MRN}|P1",
    ]


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "Patient/p-ours"},
        {"reference": "https://fhir.hkpmc.example.hk/fhir/R4/Patient/p-ours/_history/2"},
        {"identifier": {"system": MRN, "value": "P1"}},
    ],
    ids=["relative", "absolute-version", "logical"],
)
def test_the_same_patients_order_at_the_partner_is_updated(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox, subject: dict[str, Any]
) -> None:
    theirs = {**ORDER, "subject": subject}
    answer = httpx.Response(
        200, json=_answer([theirs], [{"resourceType": "Patient", "id": "p-ours"}])
    )
    row, _, sent = _run(api, deliverer, outbox, return_value=answer)
    assert (row.state, sent.call_count) == ("delivered", 1)


@pytest.mark.parametrize(
    ("subject", "why"),
    [
        (None, "without a subject"),
        ({"reference": "Group/g1"}, "not the Patient this record's condition finds"),
        ({"identifier": {"system": MRN, "value": "P2"}}, "no patient identifier in common"),
    ],
    ids=["no-subject", "a-group", "logical-other"],
)
def test_a_match_that_cannot_be_this_patients_holds(
    api: respx.MockRouter, deliverer: Deliverer, outbox: Outbox, subject: Any, why: str
) -> None:
    theirs = dict(ORDER) if subject is None else {**ORDER, "subject": subject}
    answer = httpx.Response(200, json=_answer([theirs], [{"resourceType": "Patient", "id": "p1"}]))
    row, _, sent = _run(api, deliverer, outbox, return_value=answer)
    assert (row.state, sent.call_count) == ("held", 0)
    [reason] = [e.reason for e in outbox.events(row.id) if e.to_state == "held"]
    assert why in reason and "P1" not in reason and "李" not in reason, reason
