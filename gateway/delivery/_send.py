"""Sending one part (a transaction or batch Bundle) to a partner and classifying what
happened: delivered, dead (the partner refused it), retry (nothing was applied and the
partner or the network may recover), ambiguous (the request left and no answer came:
the partner may have applied it) or held (the partner refused our credentials: a person
fixes the token or certificate and releases it). The table is in docs/delivery.md."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
import orjson

from ..partners import PartnerAuthError
from ._retry import retry_after

__all__ = [
    "KEPT_CHARS",
    "MAX_ANSWER_BYTES",
    "Answer",
    "classify_error",
    "classify_response",
    "is_fhir",
    "read_bounded",
    "send_part",
]

Kind = Literal["delivered", "dead", "retry", "ambiguous", "held"]
KEPT_CHARS = 16_384  # of the partner's answer kept with the record (its OperationOutcome)
# Read of an answer at most: a transaction-response of Medplum's 50 updates with their
# full resources is well under 1 MiB; a body past this is a proxy or a partner gone wrong.
MAX_ANSWER_BYTES = 8 << 20
_RESPONSE_TYPES = ("transaction-response", "batch-response")
FHIR_JSON = "application/fhir+json"
_RETRIED_4XX = (408, 429)  # request timeout, too many requests: the partner is busy
# Unauthorized, forbidden: our credentials, not the record, were refused. Nothing was
# applied; the record waits (held) for a fixed token or certificate, never dies of it.
_CREDENTIALS_REFUSED = (401, 403)


@dataclass(frozen=True, slots=True)
class Answer:
    kind: Kind
    reason: str  # for people: status and error class, never the record's content
    code: str | None = None  # delivery.* error code, None when delivered
    status: int | None = None  # the partner's HTTP status, when it answered
    body: str | None = None  # its answer, truncated to KEPT_CHARS
    wait: float | None = None  # seconds its Retry-After asked for
    # The partner had the request and took longer than a timeout: it may still be at
    # work, so it is given as long again before it is asked (ambiguous only).
    slow: bool = False


REQUEST_DEADLINE = 120.0  # delivery_request_deadline's default (docs/configuration.md)


class _Left:
    """One timeout of a request under a total deadline: each time the socket is given a
    timeout (httpcore calls ``socket.settimeout`` with it before every read and write),
    the configured one or what is left of the deadline, whichever is less, in whole
    seconds rounded up; 0 once it has passed (the socket no longer waits: what has
    arrived is taken, anything more fails). httpx's timeouts bound each read alone, so a
    partner trickling its headers a byte at a time would otherwise hold the worker, and
    every partner behind it, for ever. ``settimeout`` takes an integer-like (``__index__``)."""

    def __init__(self, configured: float | None, deadline: float) -> None:
        self.configured, self.deadline = configured, deadline

    def __index__(self) -> int:
        left = self.deadline - time.monotonic()
        if self.configured is not None:
            left = min(left, self.configured)
        return max(0, math.ceil(left))


def _under_deadline(client: httpx.Client, seconds: float) -> dict[str, Any]:
    """The request's timeouts (the client's) with connect, write and read bounded by a
    deadline ``seconds`` from now; the pool wait stays the client's."""
    deadline = time.monotonic() + seconds
    timeouts: dict[str, Any] = client.timeout.as_dict()
    for phase in ("connect", "write", "read"):
        timeouts[phase] = _Left(timeouts[phase], deadline)
    return timeouts


def send_part(
    client: httpx.Client, part: dict[str, Any], now: datetime, deadline: float = REQUEST_DEADLINE
) -> Answer:
    """POST one part to the partner's base URL (the client's base_url), the whole
    exchange within ``deadline`` seconds (delivery_request_deadline). The answer is
    read up to MAX_ANSWER_BYTES: a partner or proxy streaming a body without end must
    not take the worker's memory (what it said beyond that is not read)."""
    started = time.monotonic()
    try:
        with client.stream(
            "POST",
            "",
            content=orjson.dumps(part),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            extensions={"timeout": _under_deadline(client, deadline)},
        ) as response:
            content, cut = read_bounded(response, client.timeout.read)
    except httpx.TransportError as exc:
        answer = classify_error(exc)
        if answer.kind == "ambiguous" and time.monotonic() - started >= deadline:
            reason = f"sent, no complete answer within {deadline:g} s (delivery_request_deadline)"
            return Answer("ambiguous", reason, "delivery.ambiguous", slow=True)
        return answer
    except httpx.DecodingError:  # a transport that decodes before the body is streamed
        reason = "sent, answer not decodable (its Content-Encoding)"
        return Answer("ambiguous", reason, "delivery.ambiguous")
    sent = len(part.get("entry") or [])
    answer = classify_response(response, now, entries=sent, content=content)
    if cut is None or answer.kind != "delivered":
        return answer
    # An answer not read to its end: what it says of the entries is unknown.
    reason = f"HTTP {response.status_code}, {cut}"
    return Answer("ambiguous", reason, "delivery.ambiguous", response.status_code, answer.body)


def read_bounded(response: httpx.Response, within: float | None) -> tuple[bytes, str | None]:
    """The streamed body, at most MAX_ANSWER_BYTES of it and what came in ``within``
    seconds of its headers (the read timeout bounds each read, not the whole: a body
    trickled a byte at a time would hold the worker, and every partner behind it, for
    ever); and why it was cut short (None: read whole)."""
    chunks: list[bytes] = []
    size = 0
    deadline = None if within is None else time.monotonic() + within
    try:
        for chunk in response.iter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                cut = f"answer over {MAX_ANSWER_BYTES} bytes"
                return b"".join(chunks)[:MAX_ANSWER_BYTES], cut
            if deadline is not None and time.monotonic() > deadline:
                return b"".join(chunks), f"answer not complete within {within:g} s"
    except httpx.DecodingError:  # no TransportError: it would escape the classification
        return b"", "answer not decodable (its Content-Encoding)"
    return b"".join(chunks), None


def classify_error(exc: httpx.TransportError) -> Answer:
    """A failure without an answer. Connecting failed (refused, timed out, the name did
    not resolve) or no pooled connection came: nothing was sent, a retry is safe.
    Anything else happened after the request started to leave (read or write timeout,
    reset, the peer closed mid-answer): ambiguous."""
    name = type(exc).__name__
    if isinstance(exc, PartnerAuthError):  # no token to send: said by its own code
        return Answer("retry", f"no credentials ({exc.code})", exc.code)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
        return Answer("retry", f"no connection ({name})", "delivery.unreachable")
    slow = isinstance(exc, (httpx.ReadTimeout, httpx.WriteTimeout))
    reason = f"sent, no complete answer ({name})"
    return Answer("ambiguous", reason, "delivery.ambiguous", slow=slow)


def classify_response(
    response: httpx.Response,
    now: datetime,
    entries: int | None = None,
    content: bytes | None = None,
) -> Answer:
    """What the partner's answer means; ``entries``: how many entries the part sent (a
    2xx must account for each); ``content``: its body as read (default: all of it)."""
    status = response.status_code
    data = response.content if content is None else content
    body = _kept(data)
    if 200 <= status < 300:
        return _entries(status, data, body, entries)
    if status in _RETRIED_4XX or status >= 500:
        wait = retry_after(response.headers.get("Retry-After"), now)
        return Answer("retry", f"HTTP {status}", "delivery.partner-unavailable", status, body, wait)
    if status in _CREDENTIALS_REFUSED:
        reason = f"HTTP {status}: the partner refused our credentials"
        return Answer("held", reason, "delivery.credentials-refused", status, body)
    if 400 <= status < 500 and not is_fhir(data):
        # Not the FHIR server's verdict on the record (it would say why in an
        # OperationOutcome): a proxy's 404/405 page, a misrouted URL. Killing the record
        # for it would kill the whole queue in seconds; retried, the breaker opens.
        reason = f"HTTP {status} without a FHIR resource (a proxy in the way?)"
        return Answer("retry", reason, "delivery.partner-unavailable", status, body)
    if 400 <= status < 500:
        return Answer("dead", f"HTTP {status}", "delivery.partner-rejected", status, body)
    # 1xx, 3xx: a redirect to a proxy's login page, an endpoint that moved; never the
    # partner's verdict on the record. Retried (the breaker opens), dead only at the
    # attempt limit, so one misrouted answer does not kill the whole queue.
    reason = f"HTTP {status}: not acted on (a redirect is not an answer)"
    return Answer("retry", reason, "delivery.unexpected-answer", status, body)


def _entries(status: int, data: bytes, body: str | None, sent: int | None) -> Answer:
    """A 2xx: delivered when the transaction/batch response has one 2xx entry per entry
    sent (a partner without atomic transactions answers 200 with failed entries). One
    that does not account for every entry (another body, entries missing, a status
    without its three digits) says yes but not what it did: ask it, as after a lost
    answer; a blind resend is what the ambiguous-failure rule forbids."""
    try:
        bundle = orjson.loads(data)
    except orjson.JSONDecodeError:
        bundle = None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        reason = f"HTTP {status} without a transaction-response"
        return Answer("ambiguous", reason, "delivery.ambiguous", status, body)
    answered = bundle.get("entry") or []
    if bundle.get("type") not in _RESPONSE_TYPES or not isinstance(answered, list):
        reason = f"HTTP {status} with a Bundle that is not a transaction-response"
        return Answer("ambiguous", reason, "delivery.ambiguous", status, body)
    if sent is not None and len(answered) != sent:
        reason = f"HTTP {status}, {len(answered)} entries answered of {sent} sent"
        return Answer("ambiguous", reason, "delivery.ambiguous", status, body)
    failed: list[int] = []
    for entry in answered:
        response_of = (entry.get("response") if isinstance(entry, dict) else None) or {}
        text = str(response_of.get("status") if isinstance(response_of, dict) else "")
        head = text[:3]  # "201" or "201 Created"; anything else (also "²01"): unknown
        if not (head.isascii() and head.isdigit()):
            reason = f"HTTP {status}, an entry without a readable status"
            return Answer("ambiguous", reason, "delivery.ambiguous", status, body)
        code = int(head)
        if not 200 <= code < 300:
            failed.append(code)
    if not failed:
        return Answer("delivered", f"HTTP {status}", None, status, None)
    final = [c for c in failed if 400 <= c < 500 and c not in _RETRIED_4XX]
    reason = f"HTTP {status}, entries failed with {sorted(set(failed))}"
    # A resend of the whole part is safe: every entry is conditional (docs/partners.md).
    kind: Kind = "dead" if final else "retry"
    return Answer(kind, reason, "delivery.entry-failed", status, body)


def is_fhir(data: bytes) -> bool:
    """Whether the body is a FHIR resource (an OperationOutcome, as servers refuse)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str)


def _kept(data: bytes) -> str | None:
    if not data:
        return None
    text = data[: KEPT_CHARS * 4].decode("utf-8", "replace")  # no need to decode more
    # NUL bytes (a proxy's page) shown as U+FFFD: PostgreSQL's text holds no NUL, and
    # keeping the answer failed the worker's update (the record stuck in 'sending')
    text = text.replace("\0", "\ufffd")
    whole = len(data) <= KEPT_CHARS * 4 and len(text) <= KEPT_CHARS
    return text if whole else text[:KEPT_CHARS] + "…[truncated]"
