"""HTTP header values the FHIR routes share (dates, conditional reads); the refusal of a
URL holding NUL, or a fragment."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Issue, first_nul

__all__ = [
    "RefuseNul",
    "fragment_in",
    "fragment_issue",
    "header_list",
    "http_date",
    "http_since",
    "instant_since",
    "not_modified",
    "nul_in_url",
    "unchanged_read",
]


def http_date(instant: str) -> str:
    """A FHIR instant (meta.lastUpdated) as an HTTP-date (RFC 9110 5.6.7), the form
    Last-Modified takes: ``Sun, 06 Dec 2026 21:40:00 GMT``."""
    moment = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(UTC)
    return format_datetime(moment, usegmt=True)


def header_list(headers: Headers, name: str) -> str | None:
    """A header as one field value: its lines joined by commas (RFC 9110 5.3), as a
    list header is one list however it is sent; None when absent. ``headers.get``
    read the first line alone: If-Modified-Since sent twice (two dates, to be
    ignored: RFC 9110 13.1.3) was 304 by the first, and If-None-Match's second line
    of tags went unread."""
    values = headers.getlist(name)
    return ", ".join(values) if values else None


def http_since(value: str | None) -> datetime | None:
    """An ``If-Modified-Since`` header's date; None when absent, no HTTP-date, or more
    than one (then ignored: RFC 9110 13.1.3; an IMF-fixdate holds one comma, and the
    first of two was read). HTTP-dates are GMT, whichever form they take."""
    if value is not None and value.count(",") > 1:
        return None
    try:
        moment = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError):
        return None
    return moment.replace(tzinfo=moment.tzinfo or UTC) if moment is not None else None


def instant_since(value: Any) -> datetime | None:
    """A batch entry's ``request.ifModifiedSince`` (a FHIR instant: with its zone); None
    when absent or no instant (ignored, as a header that is no date is)."""
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) and value else None
    except ValueError:
        return None
    return moment if moment is not None and moment.tzinfo is not None else None


def not_modified(
    version: int, last_updated: str, if_none_match: Any, since: datetime | None
) -> bool:
    """A conditional read's answer is 304 Not Modified (FHIR R4 http.html#cread, RFC 9110
    13.1.2-13.1.3): ``if_none_match`` (``*``, or a list of entity tags, compared weakly:
    ``W/"1"`` and ``"1"`` are version 1) names the stored version; without it, the stored
    version was written at or before ``since``, a date not later than now. The instant
    is compared to the millisecond: a date copied from Last-Modified (to the second)
    answers in full unless the version was written at a whole second, so a later
    version written within the same second is never hidden (a 304 for it would be
    stale; versions are a millisecond apart at least: ``inbound/_resources.py``)."""
    if isinstance(if_none_match, str) and if_none_match.strip():
        tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
        return "*" in tags or f'"{version}"' in tags
    # a date later than this server's clock came from no Last-Modified it sent (RFC
    # 9110 8.8.2.1; RFC 2616 14.25: invalid) but from a client's clock, ahead: every
    # version written until then was 304 to a client holding an earlier one
    if since is None or since > datetime.now(UTC):
        return False
    return datetime.fromisoformat(last_updated) <= since


def unchanged_read(headers: Headers, version: int, last_updated: str | None) -> bool:
    """Whether a GET of a resource at ``version``, written at ``last_updated`` (None: not
    known, when If-Modified-Since says nothing of it), is 304 Not Modified by its request
    headers (If-None-Match, If-Modified-Since; every line of each: ``header_list``). The
    rule is ``not_modified``'s; GET /fhir/{type}/{id} and GET /Consent/{id} both ask it."""
    since = http_since(header_list(headers, "if-modified-since")) if last_updated else None
    tags = header_list(headers, "if-none-match")
    return not_modified(version, last_updated or "", tags, since)


def fragment_in(scope: Scope) -> bool:
    """A '#' in the request target as sent: a fragment, which HTTP requests do not carry
    (RFC 9112 3.2) and httpx, curl and browsers drop, but uvicorn (h11) passes on in the
    query (``identifier=…|0098765#x`` searched for ``0098765#x``: no match, a self link
    without it) or the path. A '#' in a value is sent %23 (a raw path keeps it so).
    Every GET route under /fhir refuses it: the AuditEvent routes too (an auditor's
    ``patient=…#x`` was an empty searchset: "nobody read this patient's records")."""
    raw = scope.get("raw_path") or b""
    return b"#" in raw or b"#" in scope.get("query_string", b"")


def fragment_issue() -> Issue:
    """400 ``request.invalid``: the URL holds a fragment."""
    return Issue(
        "request.invalid",
        "the URL holds a fragment ('#'): a request names none (a '#' in a search value "
        "or an id is written %23)",
        details={"issue_type": "invalid"},
    )


def nul_in_url(scope: Scope) -> str | None:
    """Where a request's URL holds U+0000 (NUL), percent-encoded: its path, or a query
    parameter (``?name``); None when nowhere. No FHIR id or search value holds one, and
    a look-up with it failed on PostgreSQL (its text holds no NUL): a 500."""
    if "\0" in scope.get("path", ""):
        return "the URL's path"
    params = QueryParams(scope.get("query_string", b""))
    named = ((f"?{k}".replace("\0", "\ufffd"), f"{k}{v}") for k, v in params.multi_items())
    return first_nul(named)


class RefuseNul:
    """ASGI middleware answering ``refuse(where)`` (a 400) to a request whose URL holds
    NUL, before any route reads it (every look-up by path or parameter at once)."""

    def __init__(self, app: ASGIApp, refuse: Callable[[str], Response]) -> None:
        self.app = app
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        where = nul_in_url(scope) if scope["type"] == "http" else None
        if where is None:
            await self.app(scope, receive, send)
            return
        await self.refuse(where)(scope, receive, send)
