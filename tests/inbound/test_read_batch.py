"""POST /fhir with a batch of GETs only (docs/inbound.md, "A batch of reads"): answered
as a batch-response, each entry what the same partner's GET answers (only what it
sent; 400/404 as that entry's OperationOutcome), audited as those GETs are, nothing kept
and nothing refused. The delivery worker's overwrite check against another gateway
(gateway/delivery/_overwrite.py) so takes one request, not one GET per search."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.audit import AuditLog
from gateway.audit._events import keys_of
from gateway.delivery._overwrite import ask_partner, writes_of
from gateway.errors import nul_message
from gateway.inbound import MAX_READ_BYTES
from gateway.store import open_store
from tests.api.live import live_server
from tests.api.test_app import Client

from .conftest import (
    LOCAL,
    NJMU2_TOKEN,
    NSCH_TOKEN,
    REFERRAL_SYSTEM,
    WHEN,
    assertion,
    counts,
    partner,
    token_form,
)

MRN = "https://fhir.nsch.example.cn/sid/mrn|0098765"
SR = f"ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001"


def _batch(*urls: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": u}} for u in urls],
        }
    )


def _code(body: dict[str, Any]) -> str:
    return str(body["issue"][0]["details"]["coding"][0]["code"])


def _events(settings: Settings) -> list[dict[str, Any]]:
    store = open_store(settings)
    try:
        return [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()


class InProcess(httpx.BaseTransport):
    """The receiving gateway's ASGI app behind a synchronous httpx client (the delivery
    worker's kind), no network."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()

        async def go() -> httpx.Response:
            answered = await httpx.ASGITransport(app=self.app).handle_async_request(request)
            body = await answered.aread()
            return httpx.Response(answered.status_code, headers=answered.headers, content=body)

        return asyncio.run(go())


def _partner_client(app: FastAPI, asked: list[str]) -> httpx.Client:
    """The sending gateway's client for HKPMC, as NSCH, counting its requests."""
    return httpx.Client(
        base_url="http://gw/fhir",
        headers=partner(NSCH_TOKEN),
        transport=InProcess(app),
        event_hooks={"request": [lambda r: asked.append(f"{r.method} {r.url.path}")]},
    )


def _inbound_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gateway.inbound") and r.levelno >= logging.WARNING
    ]


def test_a_batch_of_searches_is_answered_entry_by_entry_as_each_get(
    client: Client, signed_referral: bytes, hk_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    own = client.get(f"/fhir/{SR}", headers=partner(NSCH_TOKEN)).json()
    patient = own["entry"][0]["resource"]["subject"]["reference"]
    before, events = counts(hk_settings), len(_events(hk_settings))
    caplog.set_level(logging.INFO)
    urls = [
        SR,
        f"Patient?identifier={MRN}",
        patient,  # a read
        "Patient/no-such-id",
        "Patient?name=许",  # an unknown parameter: that entry's 400
        "Binary?identifier=x",  # a type not served: 404
        "Condition?_count=1",
    ]
    resp = client.post("/fhir", content=_batch(*urls), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["resourceType"] == "Bundle" and answer["type"] == "batch-response"
    entries = answer["entry"]
    assert len(entries) == len(urls)
    for url, entry in zip(urls, entries, strict=True):
        get = client.get(f"/fhir/{url}", headers=partner(NSCH_TOKEN))
        assert entry["response"]["status"].split()[0] == str(get.status_code), url
        mine, theirs = entry.get("resource") or entry["response"].get("outcome"), get.json()
        if theirs.get("type") == "searchset":  # the same matches; links name the entry's URL
            assert mine["type"] == "searchset" and mine["entry"] == theirs["entry"], url
            assert [x["relation"] for x in mine["link"]] == [x["relation"] for x in theirs["link"]]
        else:
            assert mine == theirs, url
    assert len(entries[0]["resource"]["entry"]) == 1 and len(entries[1]["resource"]["entry"]) == 1
    assert entries[2]["resource"]["resourceType"] == "Patient"
    assert _code(entries[4]["response"]["outcome"]) == "inbound.bad-search"
    assert _code(entries[5]["response"]["outcome"]) == "inbound.unsupported-type"
    assert entries[6]["resource"]["link"][1]["relation"] == "next"
    # nothing kept, nothing refused, no warning at the receiver
    assert counts(hk_settings) == before
    assert not [w for w in _inbound_warnings(caplog) if "refused" in w]
    # audited as the GETs are: one api-read event per entry (then one per GET above)
    added = _events(hk_settings)[events : events + len(urls)]
    assert [keys_of(e)[0] for e in added] == ["api-read"] * len(urls)
    queries = [
        next(
            d["valueString"]
            for e in ev["entity"]
            for d in e.get("detail") or []
            if d["type"] == "query"
        )
        for ev in added
    ]
    assert queries[0] == f"GET /fhir/{SR}" and queries[2] == f"GET /fhir/{patient}"


def test_a_partner_reads_in_a_batch_only_what_it_sent(
    client: Client, signed_referral: bytes
) -> None:
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    own = client.get(f"/fhir/{SR}", headers=partner(NSCH_TOKEN)).json()
    ref = own["entry"][0]["fullUrl"].split("/fhir/")[1]
    resp = client.post("/fhir", content=_batch(SR, ref), headers=partner(NJMU2_TOKEN))
    assert resp.status_code == 200, resp.text
    found, read = resp.json()["entry"]
    assert found["response"]["status"].startswith("200") and found["resource"]["entry"] == []
    assert read["response"]["status"].startswith("404")
    assert _code(read["response"]["outcome"]) == "inbound.not-found"


@pytest.mark.parametrize(
    "entry",
    [
        {"request": {"method": "GET", "url": SR}, "resource": {"resourceType": "Patient"}},
        {"request": {"method": "DELETE", "url": SR}},
        {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
    ],
    ids=["get-with-a-resource", "delete", "post"],
)
def test_only_a_batch_of_plain_gets_is_a_read(
    client: Client, hk_settings: Settings, entry: dict[str, Any]
) -> None:
    """The GETs alone are answered; with any other entry among them the batch is a
    Bundle received as before (unsigned here: refused, whatever its reads)."""
    reads = client.post("/fhir", content=_batch(SR), headers=partner(NSCH_TOKEN))
    assert reads.status_code == 200 and reads.json()["type"] == "batch-response", reads.text
    assert counts(hk_settings)["inbound_bundles"] == 0
    body = orjson.loads(_batch(SR))
    body["entry"].append(entry)
    resp = client.post("/fhir", content=orjson.dumps(body), headers=partner(NSCH_TOKEN))
    assert resp.status_code >= 400 and resp.json()["resourceType"] == "OperationOutcome"
    assert _code(resp.json()) != "inbound.bad-search"  # refused as a Bundle, not read


def test_a_read_batch_needs_partner_credentials_and_is_bounded(
    client: Client, hk_settings: Settings
) -> None:
    assert client.post("/fhir", content=_batch(SR)).status_code == 401
    wrong = {"Authorization": "Bearer wrong-token-0123456789", "Content-Type": "application/json"}
    assert client.post("/fhir", content=_batch(SR), headers=wrong).status_code == 401
    too_many = client.post("/fhir", content=_batch(*[SR] * 1001), headers=partner(NSCH_TOKEN))
    assert too_many.status_code == 400 and _code(too_many.json()) == "inbound.bad-bundle"
    # odd request URLs: that entry's 400, the others answered
    odd = ["", "ServiceRequest/x/_history/1", "http://elsewhere/fhir/Patient", 7,
           "Patient?identifier=%00", "Patient?identifier=a\u0000", SR]  # fmt: skip
    body = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": u}} for u in odd],
    }
    resp = client.post("/fhir", content=orjson.dumps(body), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    statuses = [e["response"]["status"][:3] for e in resp.json()["entry"]]
    assert statuses == ["400", "400", "400", "400", "400", "400", "200"]
    # U+0000 in a search: that entry's 400 (PostgreSQL's text takes none: never a 500)
    assert {_code(e["response"]["outcome"]) for e in resp.json()["entry"][4:6]} == {
        "inbound.bad-search"
    }
    # in the words every other refusal of a NUL uses (gateway/errors.py)
    assert [
        e["response"]["outcome"]["issue"][0]["diagnostics"] for e in resp.json()["entry"][4:6]
    ] == [nul_message(f"Bundle.entry[{n}].request.url") for n in (4, 5)]
    assert counts(hk_settings)["inbound_bundles"] == 0


@pytest.mark.parametrize(
    ("scope", "status"),
    [("system/*.read", "200"), ("system/*.rs", "200"), ("system/*.write", "403")],
)
def test_a_smart_token_reads_in_a_batch_as_its_read_scope_allows(
    client: Client, signed_referral: bytes, pki: Path, scope: str, status: str
) -> None:
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    form = token_form(assertion(pki, "nsch", "nsch"), scope)
    token = client.post("/auth/token", data=form).json()["access_token"]
    resp = client.post("/fhir", content=_batch(SR), headers=partner(token))
    assert resp.status_code == 200, resp.text
    (found,) = resp.json()["entry"]
    assert found["response"]["status"][:3] == status
    if status == "200":
        assert len(found["resource"]["entry"]) == 1
    else:
        assert _code(found["response"]["outcome"]) == "inbound.scope"


def test_the_overwrite_check_against_another_gateway_is_one_batch_request(
    client: Client,
    signed_referral: bytes,
    referral: dict[str, Any],
    hk_settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sending gateway's worker asks the receiving gateway (its in-process API) before
    resending the referral: one POST, answered; no refused row, no warning there."""
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    before = counts(hk_settings)
    caplog.set_level(logging.INFO)
    asked: list[str] = []
    with _partner_client(client.app, asked) as http:
        check = ask_partner(http, writes_of([referral]), WHEN)
    assert asked == ["POST /fhir/"]
    assert check.outcome == "clear" and not check.batch_refused, check
    assert counts(hk_settings) == before
    assert _inbound_warnings(caplog) == []
    # the same identifier for another patient: held, by the same one request
    other = orjson.loads(orjson.dumps(referral))
    for e in other["entry"]:
        if e["resource"]["resourceType"] == "Patient":
            e["resource"]["identifier"][0]["value"] = "0012345"
            e["request"]["ifNoneExist"] = "identifier=https://fhir.nsch.example.cn/sid/mrn|0012345"
    asked.clear()
    with _partner_client(client.app, asked) as http:
        held = ask_partner(http, writes_of([other]), WHEN)
    assert asked == ["POST /fhir/"] and held.outcome == "held" and not held.batch_refused


def test_the_answers_of_a_read_batch_hold_a_bounded_number_of_resources(
    client: Client, signed_referral: bytes, hk_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,000 searches of _count=1000 would hold a million resources in one response
    (each GET answers one page): past MAX_READ_RESOURCES an entry is its own 400
    inbound.too-costly, never a page cut short, and writes no read event."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    own = client.get(f"/fhir/{SR}", headers=partner(NSCH_TOKEN)).json()
    ref = own["entry"][0]["fullUrl"].split("/fhir/")[1]
    monkeypatch.setattr("gateway.api._fhir.MAX_READ_RESOURCES", 2)
    events = len(_events(hk_settings))
    urls = [f"{SR}&_count=1000", ref, f"{SR}&_count=1000", "Task?_count=1000", ref]
    resp = client.post("/fhir", content=_batch(*urls), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    answered = resp.json()["entry"]
    statuses = [e["response"]["status"][:3] for e in answered]
    # 1 + 1 resources answered; a third would pass the bound; an empty search costs none
    assert statuses == ["200", "200", "400", "200", "400"], statuses
    assert {_code(answered[i]["response"]["outcome"]) for i in (2, 4)} == {"inbound.too-costly"}
    assert answered[2]["response"]["outcome"]["issue"][0]["code"] == "too-costly"
    assert len(_events(hk_settings)) == events + 3  # the answered entries only


def test_a_search_entry_of_too_many_values_is_its_own_400_not_the_batchs_500(
    client: Client, signed_referral: bytes
) -> None:
    """A GET's URL is bounded by the HTTP server's request line, a batch entry's only by
    max_bundle_bytes: 300,000 _id values (or 100,000 _lastUpdated) were as many SQL
    variables (SQLite's bound 250,000, PostgreSQL's 65,535): the whole batch's 500."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    ids = "ServiceRequest?_id=" + ",".join(f"i{k}" for k in range(300_000))
    moments = "ServiceRequest?" + "&".join(["_lastUpdated=ge2026-01-01"] * 100_000)
    resp = client.post("/fhir", content=_batch(ids, moments, SR), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text[:300]
    many_ids, many_moments, found = resp.json()["entry"]
    for refused in (many_ids, many_moments):
        assert refused["response"]["status"][:3] == "400"
        assert _code(refused["response"]["outcome"]) == "inbound.bad-search"
    assert len(found["resource"]["entry"]) == 1


def test_a_one_type_read_token_reads_that_type_in_a_batch(
    client: Client, signed_referral: bytes, pki: Path
) -> None:
    """system/ServiceRequest.read answers GET /fhir/ServiceRequest: its batch entry too
    (another type's entry its own 403), not the whole batch refused as lacking write."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    form = token_form(assertion(pki, "nsch", "nsch"), "system/ServiceRequest.read")
    token = client.post("/auth/token", data=form).json()["access_token"]
    assert client.get(f"/fhir/{SR}", headers=partner(token)).status_code == 200
    resp = client.post(
        "/fhir", content=_batch(SR, f"Patient?identifier={MRN}"), headers=partner(token)
    )
    assert resp.status_code == 200, resp.text
    found, other = resp.json()["entry"]
    assert found["response"]["status"][:3] == "200" and len(found["resource"]["entry"]) == 1
    assert other["response"]["status"][:3] == "403"
    assert _code(other["response"]["outcome"]) == "inbound.scope"


@pytest.mark.parametrize(
    "body",
    [
        # orjson keeps the last "url": another reader the first (another search)
        b'{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET",'
        b'"url":"Patient?identifier=a|1","url":"Patient?identifier=a|2"}}]}',
        b'{"resourceType":"Bundle","type":"batch","type":"batch","entry":[{"request":'
        b'{"method":"GET","url":"Patient"}}]}',
    ],
    ids=["url-twice", "type-twice"],
)
def test_a_read_batch_with_a_member_name_twice_is_refused_as_a_write_is(
    client: Client, signed_referral: bytes, body: bytes
) -> None:
    """A received Bundle with a member name twice is 400 inbound.bad-bundle naming the
    element (RFC 7493 I-JSON: readers differ on which value counts); a batch of reads
    kept the last, answering a search another reader would not have asked."""
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome" and _code(outcome) == "inbound.bad-bundle"
    assert "twice" in outcome["issue"][0]["diagnostics"]
    # the write path's own answer to such a Bundle
    written = body.replace(b'"method":"GET"', b'"method":"POST"')
    as_write = client.post("/fhir", content=written, headers=partner(NSCH_TOKEN)).json()
    assert (
        _code(as_write) == "inbound.bad-bundle" and "twice" in as_write["issue"][0]["diagnostics"]
    )


def test_a_fragment_in_an_entrys_url_is_that_entrys_400_not_a_search_value(
    client: Client, signed_referral: bytes
) -> None:
    """``Patient?identifier=…|0098765#x`` searched for ``0098765#x``: an empty searchset,
    which an overwrite check reads as no match. A request URL names no fragment (a '#' in
    a value is sent as %23, which is still searched): the entry's 400 naming it."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    urls = [f"Patient?identifier={MRN}#x", "Patient#x", f"{SR}#", f"Patient?identifier={MRN}%23x",
            f"Patient?identifier={MRN}"]  # fmt: skip
    resp = client.post("/fhir", content=_batch(*urls), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    assert [e["response"]["status"][:3] for e in entries] == ["400", "400", "400", "200", "200"]
    for n in range(3):
        issue = entries[n]["response"]["outcome"]["issue"][0]
        assert issue["details"]["coding"][0]["code"] == "inbound.bad-entry"
        assert issue["expression"] == [f"Bundle.entry[{n}].request.url"]
        assert "fragment" in issue["diagnostics"]
    assert entries[3]["resource"]["entry"] == [] and len(entries[4]["resource"]["entry"]) == 1


def _raw_get(port: int, target: str, token: str) -> tuple[int, dict[str, Any]]:
    """``GET target`` as written (httpx drops a fragment before sending; a raw client
    need not): the status and the JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = f"GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\n"
        sock.sendall((head + "Connection: close\r\n\r\n").encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), orjson.loads(rest.partition(b"\r\n\r\n")[2])


def test_the_get_routes_refuse_a_fragment_as_the_batch_does(
    client: Client, signed_referral: bytes, hk_settings: Settings, converter: Converter
) -> None:
    """uvicorn (h11) passes ``#x`` on in the query: ``identifier=…|0098765#x`` was an
    empty searchset whose self link named ``…|0098765``, ``_count=1#x`` "not a number"."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    app = create_app(hk_settings, converter, TokenSet([LOCAL]))
    try:
        with live_server(app, hk_settings) as port:
            plain = _raw_get(port, f"/fhir/Patient?identifier={MRN}", NSCH_TOKEN)
            assert plain[0] == 200 and len(plain[1]["entry"]) == 1
            escaped = _raw_get(port, f"/fhir/Patient?identifier={MRN}%23x", NSCH_TOKEN)
            assert escaped[0] == 200 and escaped[1]["entry"] == []  # a value's '#': searched
            for target in (f"/fhir/Patient?identifier={MRN}#x", "/fhir/Patient?_count=1#x",
                           "/fhir/Patient#x", "/fhir/Patient/p-1#x"):  # fmt: skip
                status, outcome = _raw_get(port, target, NSCH_TOKEN)
                assert status == 400, (target, outcome)
                assert _code(outcome) == "request.invalid" and "fragment" in str(outcome)
            assert _raw_get(port, "/fhir/Patient#x", "wrong-token-0123456789")[0] == 401
    finally:
        app.state.fhir.close()


def _reader_token(client: Client, pki: Path) -> str:
    form = token_form(assertion(pki, "nsch", "nsch"), "system/*.read")
    return str(client.post("/auth/token", data=form).json()["access_token"])


@pytest.mark.parametrize(
    ("declared", "megabytes"), [(True, 10), (False, 100)], ids=["content-length", "chunked"]
)
def test_a_read_only_tokens_large_body_is_refused_before_it_is_read(
    client: Client, signed_referral: bytes, pki: Path, declared: bool, megabytes: int
) -> None:
    """A token that may only read sends batches of reads, never a write: its body is
    read up to the batch's bound (MAX_READ_BYTES), not max_bundle_bytes (up to 16 MiB
    read, and parsed, before the 403), so 100 MB sent by a reader costs a MiB at most;
    10 MB declared, nothing."""
    client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    token = _reader_token(client, pki)
    total, piece = megabytes * 1024 * 1024, b"x" * 65536
    sent: list[int] = []

    async def upload() -> Any:
        for _ in range(total // len(piece)):
            sent.append(len(piece))
            yield piece

    headers = partner(token) | ({"Content-Length": str(total)} if declared else {})
    resp = client.post("/fhir", content=upload(), headers=headers)
    assert sum(sent) <= (0 if declared else MAX_READ_BYTES + len(piece)), sum(sent)
    assert resp.status_code == 413, resp.text
    assert _code(resp.json()) == "request.too-large"
    assert "only read" in resp.json()["issue"][0]["diagnostics"]
    # its batch of reads is still answered, a write (under the bound) still its 403
    assert client.post("/fhir", content=_batch(SR), headers=partner(token)).status_code == 200
    write = client.post("/fhir", content=signed_referral, headers=partner(token))
    assert write.status_code == 403 and _code(write.json()) == "inbound.scope"
