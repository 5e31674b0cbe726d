"""Sending one part (a transaction or batch Bundle) to a partner and classifying what
happened: delivered, dead (the partner refused it), retry (nothing was applied and the
partner or the network may recover), ambiguous (the request left and no answer came:
the partner may have applied it) or held (the partner refused our credentials: a person
fixes the token or certificate and releases it). The table is in docs/delivery.md."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import httpx
import orjson

from ..partners import PartnerAuthError
from ._retry import retry_after

__all__ = ["KEPT_CHARS", "Answer", "classify_error", "classify_response", "send_part"]

Kind = Literal["delivered", "dead", "retry", "ambiguous", "held"]
KEPT_CHARS = 16_384  # of the partner's answer kept with the record (its OperationOutcome)
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


def send_part(client: httpx.Client, part: dict[str, Any], now: datetime) -> Answer:
    """POST one part to the partner's base URL (the client's base_url)."""
    try:
        response = client.post(
            "",
            content=orjson.dumps(part),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        )
    except httpx.TransportError as exc:
        return classify_error(exc)
    return classify_response(response, now)


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
    return Answer("ambiguous", f"sent, no complete answer ({name})", "delivery.ambiguous")


def classify_response(response: httpx.Response, now: datetime) -> Answer:
    status = response.status_code
    body = _kept(response)
    if 200 <= status < 300:
        return _entries(status, response, body)
    if status in _RETRIED_4XX or status >= 500:
        wait = retry_after(response.headers.get("Retry-After"), now)
        return Answer("retry", f"HTTP {status}", "delivery.partner-unavailable", status, body, wait)
    if status in _CREDENTIALS_REFUSED:
        reason = f"HTTP {status}: the partner refused our credentials"
        return Answer("held", reason, "delivery.credentials-refused", status, body)
    if 400 <= status < 500:
        return Answer("dead", f"HTTP {status}", "delivery.partner-rejected", status, body)
    return Answer("dead", f"HTTP {status}", "delivery.unexpected-answer", status, body)


def _entries(status: int, response: httpx.Response, body: str | None) -> Answer:
    """A 2xx: delivered when every entry of the transaction/batch response is 2xx (a
    partner without atomic transactions answers 200 with failed entries)."""
    try:
        bundle = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        bundle = None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        # The partner said yes but not what it did: ask it, as after a lost answer.
        reason = f"HTTP {status} without a transaction-response"
        return Answer("ambiguous", reason, "delivery.ambiguous", status, body)
    failed: list[int] = []
    for entry in bundle.get("entry") or []:
        text = str(((entry or {}).get("response") or {}).get("status") or "")
        code = int(text[:3]) if text[:3].isdigit() else 0  # "201" or "201 Created"
        if not 200 <= code < 300:
            failed.append(code)
    if not failed:
        return Answer("delivered", f"HTTP {status}", None, status, None)
    final = [c for c in failed if 400 <= c < 500 and c not in _RETRIED_4XX]
    reason = f"HTTP {status}, entries failed with {sorted(set(failed))}"
    # A resend of the whole part is safe: every entry is conditional (docs/partners.md).
    kind: Kind = "dead" if final else "retry"
    return Answer(kind, reason, "delivery.entry-failed", status, body)


def _kept(response: httpx.Response) -> str | None:
    if not response.content:
        return None
    text = response.content.decode("utf-8", "replace")
    return text if len(text) <= KEPT_CHARS else text[:KEPT_CHARS] + "…[truncated]"
