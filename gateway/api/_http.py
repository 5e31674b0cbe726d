"""HTTP header values the FHIR routes share; the refusal of a URL holding NUL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

from starlette.datastructures import QueryParams
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import first_nul

__all__ = ["RefuseNul", "http_date", "nul_in_url"]


def http_date(instant: str) -> str:
    """A FHIR instant (meta.lastUpdated) as an HTTP-date (RFC 9110 5.6.7), the form
    Last-Modified takes: ``Sun, 06 Dec 2026 21:40:00 GMT``."""
    moment = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(UTC)
    return format_datetime(moment, usegmt=True)


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
