"""Adversarial review of delivery: a partner (or a proxy in front of it) answering
what no partner should — absurd or garbage ``Retry-After``, a 2xx whose body is an
OperationOutcome of errors, HTML, a transaction-response that does not account for what
was sent, a body without end. Single HTTP outcomes, so respx; the partner server's own
faults are in test_adversarial_partner.py. Each record ends delivered, retried within
its life, asked about, or final with a reason; never an exception, never limbo."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import respx

from gateway.delivery import Deliverer, DeliveryConfig, Outbox, retry_after

from .conftest import BASE, CONFIG, PARTNER, POST_URL, Clock, bundle, response, searchset

BUSY = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "throttled", "diagnostics": "slow down"}],
}


# -- Retry-After: absurd, negative, garbage ------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        "1000000000",  # 10^9 s: 31 years
        "9" * 400,  # more digits than a float holds
        "Fri, 31 Dec 9999 23:59:59 GMT",  # the last date there is
        "Sat, 05 Dec 2099 08:00:00 GMT",  # HTTP-date, absurdly far
    ],
    ids=["1e9", "400-digits", "year-9999", "year-2099"],
)
def test_an_absurd_retry_after_is_honoured_only_within_the_records_life(
    header: str,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    """A Retry-After beyond the record's delivery_max_age parked it for decades (or
    raised OverflowError and left it `sending`): the retry comes at the end of its life
    at the latest, and then it is delivered or given up with a reason."""
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(429, headers={"Retry-After": header}, json=BUSY),
        httpx.Response(503, headers={"Retry-After": header}, json=BUSY),
    ]
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.last_error == "delivery.partner-unavailable"
    assert record.next_at is not None
    assert record.next_at <= record.created_at + CONFIG.max_age  # within its life
    assert record.next_at >= clock.now + timedelta(minutes=30)  # still a long wait
    clock.now = record.next_at
    deliverer.run_once()
    final = outbox.require(row)
    assert post.call_count == 2
    assert final.state == "dead" and final.last_error == "delivery.gave-up"


@pytest.mark.parametrize(
    "header",
    ["-5", "1e3", "12.5", "\xb2", "soon", "Sat, 05 Dec 99999 08:00:00 GMT", "0x10"],
    ids=["negative", "exponent", "decimal", "superscript-two", "word", "year-99999", "hex"],
)
def test_a_garbage_retry_after_falls_back_to_backoff(
    header: str,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    """``\\xb2`` (superscript two, a latin-1 header byte) passed ``str.isdigit`` and
    raised ValueError from ``int()``: the record was left `sending`, unclassified."""
    assert retry_after(header, clock.now) is None
    raw = [(b"Retry-After", header.encode("latin-1"))]  # as the bytes came
    partner_api.post(POST_URL).respond(503, headers=raw, json=BUSY)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.next_at is not None
    assert clock.now <= record.next_at <= clock.now + timedelta(seconds=CONFIG.backoff_base)


# -- 2xx that is not a transaction-response ------------------------------------------
@pytest.mark.parametrize(
    "body,content_type",
    [
        (
            b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}',
            "application/fhir+json",
        ),
        (b"<html><body><h1>Gateway OK</h1></body></html>", "text/html"),
        (b"", "application/fhir+json"),
    ],
    ids=["operation-outcome", "html-from-a-proxy", "empty"],
)
def test_a_2xx_that_never_applied_it_is_asked_about_then_given_up_not_cycled_forever(
    body: bytes,
    content_type: str,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    """A 200 that is not a transaction-response is ambiguous: ask. The partner never has
    it, so it is sent again... and the ambiguous path never counted towards
    delivery_max_attempts: the record cycled sending → waiting → sending forever."""
    post = partner_api.post(POST_URL).respond(
        200, content=body, headers={"Content-Type": content_type}
    )
    partner_api.get(BASE + "/Patient").respond(200, json=searchset())
    partner_api.get(BASE + "/ServiceRequest").respond(200, json=searchset())
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    for _ in range(4 * CONFIG.max_attempts):
        deliverer.run_once()
        record = outbox.require(row)
        if record.state in ("dead", "held", "delivered"):
            break
        assert record.next_at is not None
        clock.now = max(clock.now, record.next_at) + timedelta(seconds=CONFIG.breaker_cooldown)
    record = outbox.require(row)
    assert record.state == "dead" and record.last_error == "delivery.gave-up"
    assert post.call_count == CONFIG.max_attempts  # each resend only after asking
    events = outbox.events(row)
    assert sum(e.from_state == "waiting" for e in events) == CONFIG.max_attempts
    assert "asked" in events[-1].reason


# -- transaction-responses that do not account for what was sent ----------------------
def test_a_transaction_response_missing_entries_is_not_taken_as_delivered(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """Two entries sent, an empty transaction-response back: nothing says they were
    applied, so the partner is asked (it has neither: sent again), never 'delivered'."""
    post = partner_api.post(POST_URL)
    post.side_effect = [
        httpx.Response(200, json=response()),
        httpx.Response(200, json=response("201", "201")),
    ]
    partner_api.get(BASE + "/Patient").respond(200, json=searchset())
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "waiting" and record.last_error == "delivery.ambiguous"
    clock.now = record.next_at
    deliverer.run_once()
    assert outbox.require(row).state == "delivered" and post.call_count == 2


@pytest.mark.parametrize(
    "status",
    ["Created", "\u00b201 Created", "\u0662\u0660\u0661"],  # '²01', Arabic-Indic 201
    ids=["word", "superscript-two", "arabic-indic"],
)
def test_an_entry_without_a_readable_status_is_asked_about_not_resent_blindly(
    status: str, outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    """Digits other than ASCII pass ``str.isdigit`` and then fail (``²``) or pass (``٢٠١``)
    ``int``: neither is an HTTP status."""
    broken = response("201", "201")
    broken["entry"][1]["response"] = {"status": status}
    partner_api.post(POST_URL).respond(200, json=broken)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "waiting" and record.last_error == "delivery.ambiguous"


def test_a_failed_entry_in_a_200_transaction_response_is_dead_with_the_answer_kept(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    failed = response("201", "400")
    failed["entry"][1]["response"]["outcome"] = BUSY
    partner_api.post(POST_URL).respond(200, json=failed)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert record.state == "dead" and record.last_error == "delivery.entry-failed"
    assert record.last_response is not None and "throttled" in record.last_response


# -- a body without end -----------------------------------------------------------------
class Endless(httpx.SyncByteStream):
    """1 MiB chunks, up to ``total``; counts what the client pulled."""

    def __init__(self, total: int, first: bytes = b"") -> None:
        self.total = total
        self.pulled = 0
        self.first = first

    def __iter__(self) -> Iterator[bytes]:
        chunk = b" " * (1 << 20)
        if self.first:
            self.pulled += len(self.first)
            yield self.first
        while self.pulled < self.total:
            self.pulled += len(chunk)
            yield chunk


@pytest.mark.parametrize("status", [200, 503])
def test_a_huge_answer_is_not_read_whole(
    status: int, outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    """A partner (or proxy) streaming a body without end was read whole into memory
    (and parsed) before the answer was classified: it is read up to a bound."""
    stream = Endless(256 << 20, first=b'{"resourceType":"Bundle","entry":[')
    partner_api.post(POST_URL).mock(
        return_value=httpx.Response(
            status, stream=stream, headers={"Content-Type": "application/fhir+json"}
        )
    )
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert stream.pulled <= 64 << 20
    expected = (
        ("waiting", "delivery.ambiguous")
        if status == 200
        else ("retrying", "delivery.partner-unavailable")
    )
    assert (record.state, record.last_error) == expected
    assert record.last_response is not None and len(record.last_response) < 20_000


def test_config_with_a_short_life_still_waits_at_least_the_backoff(
    outbox: Outbox, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """A record at the end of its life: a Retry-After is cut to what is left, never to a
    negative wait (next_at in the past) or an exception."""
    config = DeliveryConfig(
        backoff_base=1.0,
        backoff_cap=30.0,
        max_attempts=10,
        max_age=timedelta(minutes=5),
        breaker_threshold=50,
    )
    partner_api.post(POST_URL).respond(429, headers={"Retry-After": "3600"}, json=BUSY)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    clock.advance(299)
    with Deliverer(outbox, {"hkpmc": PARTNER}, config, rng=random.Random(3)) as d:
        d.run_once()
    record = outbox.require(row)
    assert record.state == "retrying" and record.next_at is not None
    assert clock.now <= record.next_at <= record.created_at + config.max_age


# -- the question after an ambiguous send, answered with nonsense ------------------------
@pytest.mark.parametrize(
    "answer",
    [
        b"<html><body>Maintenance</body></html>",
        b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception"}]}',
        b'{"resourceType":"Bundle","type":"searchset","entry":["x"]}',
        b'{"resourceType":"Bundle","type":"searchset","entry":[{"resource":"x"}]}',
        b'{"resourceType":"Bundle","type":"searchset","entry":{"resource":{}}}',
        b"[]",
    ],
    ids=["html", "operation-outcome", "entry-string", "resource-string", "entry-object", "array"],
)
def test_a_search_answered_with_no_searchset_is_no_answer(
    answer: bytes,
    outbox: Outbox,
    deliverer: Deliverer,
    clock: Clock,
    partner_api: respx.MockRouter,
) -> None:
    """After an ambiguous send the partner is asked; a 200 that is not a searchset (a
    proxy's page) was read as 'not there' and the part sent again blindly, and malformed
    entries raised AttributeError (the row stuck until its lease ran out). Neither says
    what the partner holds: ask again later."""
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    partner_api.get(BASE + "/Patient").respond(200, content=answer)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    record = outbox.require(row)
    assert post.call_count == 1  # never sent again on the strength of that
    last = outbox.events(row)[-1]
    assert (last.from_state, last.to_state) == ("waiting", "waiting")
    assert "not asked" in last.reason and record.state == "waiting"


def test_a_partner_that_never_answers_the_question_holds_the_record_at_its_end_of_life(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """Asked again and again (GETs, no limit) the record waited for ever: at the end of
    its life it is held for a person, with the reason, never sent blindly."""
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    searches = partner_api.get(BASE + "/Patient").respond(503, json=BUSY)
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    for _ in range(1000):
        deliverer.run_once()
        record = outbox.require(row)
        if record.state != "waiting":
            break
        assert record.next_at is not None
        clock.now = max(clock.now, record.next_at) + timedelta(seconds=CONFIG.breaker_cooldown)
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("held", "delivery.unverifiable")
    assert post.call_count == 1 and searches.call_count > 1
    assert "never answered" in outbox.events(row)[-1].reason


def test_a_search_answer_without_end_is_not_read_whole(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    stream = Endless(256 << 20, first=b'{"resourceType":"Bundle","type":"searchset","entry":[')
    partner_api.get(BASE + "/Patient").mock(return_value=httpx.Response(200, stream=stream))
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    assert stream.pulled <= 64 << 20 and post.call_count == 1
    last = outbox.events(row)[-1]
    assert (last.to_state, "not asked" in last.reason) == ("waiting", True)


class Bomb(httpx.SyncByteStream):
    """gzip of 512 MiB of spaces (about 500 KiB), in 16 KiB pieces; counts what the
    client pulled."""

    def __init__(self) -> None:
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b" " * (1 << 20)
        self.data = b"".join(packer.compress(block) for _ in range(512)) + packer.flush()
        self.pulled = 0

    def __iter__(self) -> Iterator[bytes]:
        for at in range(0, len(self.data), 16 << 10):
            piece = self.data[at : at + (16 << 10)]
            self.pulled += len(piece)
            yield piece


def test_a_compressed_answer_is_bounded_by_what_it_expands_to(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    bomb = Bomb()
    headers = {"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"}
    partner_api.post(POST_URL).mock(return_value=httpx.Response(200, stream=bomb, headers=headers))
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    assert bomb.pulled < len(bomb.data) // 4  # stopped after a few MiB expanded
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("waiting", "delivery.ambiguous")


@pytest.mark.parametrize(
    "body,content_type",
    [
        (b"<html><body><h1>404 Not Found</h1><hr>nginx</body></html>", "text/html"),
        (b'{"message":"no Route matched with those values"}', "application/json"),
        (b"", "text/plain"),
    ],
    ids=["nginx-page", "api-gateway-json", "empty"],
)
def test_a_4xx_that_is_not_the_fhir_servers_does_not_kill_the_queue(
    body: bytes,
    content_type: str,
    outbox: Outbox,
    deliverer: Deliverer,
    partner_api: respx.MockRouter,
) -> None:
    """A proxy answering 404 with its own page (a partner moved, a route missing): the
    partner never judged the records, yet each was made dead at once, one after the
    other (a 4xx counts as the partner being up: the breaker never opened), the whole
    queue in seconds. Without an OperationOutcome it is retried: the breaker opens and
    the other records wait."""
    partner_api.post(POST_URL).respond(404, content=body, headers={"Content-Type": content_type})
    rows = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(6)]
    deliverer.run_once()
    states = [outbox.require(r).state for r in rows]
    assert "dead" not in states
    assert states.count("retrying") == CONFIG.breaker_threshold
    assert {
        outbox.require(r).last_error for r in rows if outbox.require(r).state == "retrying"
    } == {"delivery.partner-unavailable"}


@pytest.mark.parametrize("status", [302, 307, 301])
def test_a_redirect_to_a_login_page_does_not_kill_the_queue(
    status: int, outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    """A proxy redirecting every request to its single sign-on page: each record was
    made dead at once (1xx/3xx: not acted on), one after the other, the breaker never
    opening. It is retried: the breaker opens, the other records wait."""
    partner_api.post(POST_URL).respond(
        status, headers={"Location": "https://sso.example.hk/login"}, text="<html>login</html>"
    )
    rows = [outbox.enqueue(PARTNER, bundle(f"P{n}", f"O{n}"))[0] for n in range(6)]
    deliverer.run_once()
    states = [outbox.require(r).state for r in rows]
    assert "dead" not in states and states.count("retrying") == CONFIG.breaker_threshold


def test_a_proxys_page_answering_the_question_is_no_answer(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    """After an ambiguous send, the search answered 404 by a proxy's page: the record was
    held for a person at once (the partner 'refused' the search). Not the partner's
    answer: ask again later."""
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    partner_api.get(BASE + "/Patient").respond(404, text="<html>Not Found</html>")
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    assert outbox.require(row).state == "waiting" and post.call_count == 1
    assert "not asked" in outbox.events(row)[-1].reason


def test_an_answer_that_cannot_be_decoded_is_classified_not_raised(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    """``Content-Encoding: gzip`` over bytes that are not gzip: httpx raises
    DecodingError, which is no TransportError; it escaped the send and the row stayed
    `sending`, unclassified, until its lease ran out (respx decodes in the transport;
    a real connection in the body: test_adversarial_trickle.py)."""
    headers = {"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"}
    garbage = httpx.ByteStream(b"this is not gzip")
    partner_api.post(POST_URL).mock(
        return_value=httpx.Response(200, headers=headers, stream=garbage)
    )
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert (record.state, record.last_error, record.attempts) == (
        "waiting",
        "delivery.ambiguous",
        1,
    )


def test_a_question_answered_with_undecodable_bytes_is_no_answer(
    outbox: Outbox, deliverer: Deliverer, clock: Clock, partner_api: respx.MockRouter
) -> None:
    post = partner_api.post(POST_URL).mock(side_effect=httpx.ReadTimeout("timed out"))
    garbage = httpx.ByteStream(b"this is not gzip")
    headers = {"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"}
    partner_api.get(BASE + "/Patient").mock(
        return_value=httpx.Response(200, headers=headers, stream=garbage)
    )
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    clock.now = outbox.require(row).next_at
    deliverer.run_once()
    assert outbox.require(row).state == "waiting" and post.call_count == 1
    assert "not asked" in outbox.events(row)[-1].reason


def test_an_answer_holding_nul_bytes_is_kept_readable(
    outbox: Outbox, deliverer: Deliverer, partner_api: respx.MockRouter
) -> None:
    """A proxy's 503 page with NUL bytes in it: kept for people as text, the NUL shown as
    U+FFFD. On PostgreSQL, whose text holds no NUL, keeping it failed the worker's
    update (the record stayed 'sending', the run crashed)."""
    partner_api.post(POST_URL).respond(503, content=b"busy\x00\x00 try later")
    row, _ = outbox.enqueue(PARTNER, bundle("P1", "O1"))
    deliverer.run_once()
    record = outbox.require(row)
    assert (record.state, record.last_error) == ("retrying", "delivery.partner-unavailable")
    assert record.last_response == "busy\ufffd\ufffd try later"
