"""A partner's ``batch`` of reads on ``POST /fhir`` (docs/inbound.md, "A batch of reads").

A batch whose entries are all ``request.method: GET`` without a resource asks, it does
not send: another gateway's overwrite check (gateway/delivery/_overwrite.py) asks so
before a record's first part. Such a Bundle is not a received Bundle: nothing of it is
stored, no signature is asked for (there is nothing to prove the origin of: no write),
and it is never a refusal. Each entry is answered as the same partner's GET of its URL
(gateway/api/_fhir.py). Any other Bundle (a write among the GETs, an entry with a
resource, a transaction) is received as before (_receive.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import orjson

from ..errors import nul_message
from ._errors import InboundError
from ._receive import check_unique_names

__all__ = [
    "MAX_READ_BYTES",
    "MAX_READ_ENTRIES",
    "MAX_READ_RESOURCES",
    "Read",
    "parse_read",
    "read_requests",
]

# Most GETs in one batch: each is a database query answering up to a page of
# resources (``_count`` at most 1000); the body is bounded by max_bundle_bytes too.
MAX_READ_ENTRIES = 1000
# Most resources the answers of one batch hold (five full pages): 1,000 searches of
# ``_count=1000`` would hold a million resources in one response, in memory at once (GBs);
# the GETs they stand for answer one page each. An entry whose answer would pass it is
# its own 400 ``inbound.too-costly``, never a page cut short (the overwrite check reads
# the first page as all the matches).
MAX_READ_RESOURCES = 5000
# Most bytes of the body of a token that may only read (SMART system/*.read): it sends
# batches of reads, never a write, so more is refused (413) before it is read, not read
# up to max_bundle_bytes (16 MiB) and parsed to be refused (403). 1,000 GETs of 1 KiB:
# the overwrite check's are ~150 bytes each (Type?identifier=system|value).
MAX_READ_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Read:
    """One entry's GET: a read (``id``) or a search (``params``) of ``resource_type``;
    ``url`` as the entry gave it (its path and query, relative to ``/fhir``)."""

    url: str
    resource_type: str
    id: str | None
    params: list[tuple[str, str]]


def read_requests(body: bytes) -> list[dict[str, Any]] | None:
    """The ``request`` of each entry of a batch of GETs only (its ``url``, and its
    ``ifNoneMatch`` / ``ifModifiedSince`` of a conditional read), or None when the body
    is anything else (received as a Bundle, as before: its refusal says what is wrong).
    A member name twice, or more than MAX_READ_ENTRIES GETs: 400 ``inbound.bad-bundle``."""
    try:
        bundle = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        return None
    entries = bundle.get("entry")
    if bundle.get("type") != "batch" or not isinstance(entries, list) or not entries:
        return None
    urls: list[dict[str, Any]] = []
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or request.get("method") != "GET" or "resource" in entry:
            return None  # a write, or a GET carrying a resource: not a read
        urls.append(request)
    # a member name twice: refused as a received Bundle is (400 inbound.bad-bundle
    # naming it); orjson kept the last, another reader the first (another search)
    check_unique_names(body)
    if len(urls) > MAX_READ_ENTRIES:
        raise InboundError(
            "inbound.bad-bundle",
            f"a batch of reads holds {len(urls)} entries; at most {MAX_READ_ENTRIES}: send several",
            expression="Bundle.entry",
        )
    return urls


def _fragment(where: str) -> str:
    """A '#' in a request URL: a fragment, which no request names (RFC 9112 3.2; the
    GET routes refuse it too), never a search value (a '#' in a value is sent %23)."""
    return (
        f"{where}: holds a fragment ('#'): a request URL names none (a '#' in a search "
        "value is written %23)"
    )


def parse_read(url: Any, n: int) -> Read:
    """Entry ``n``'s GET: ``Type?params`` (a search), ``Type`` or ``Type/id`` (a read),
    relative to the FHIR base as R4 batch URLs are; else (a fragment too) 400
    ``inbound.bad-entry``."""
    where = f"Bundle.entry[{n}].request.url"
    if not isinstance(url, str) or not url:
        raise InboundError("inbound.bad-entry", f"{where} is not a URL", expression=where)
    if "#" in url:  # read as data, a "#x" searched for "…|0098765#x": matched nothing
        raise InboundError("inbound.bad-entry", _fragment(where), expression=where)
    path, _, query = url.partition("?")
    parts = [unquote(p) for p in path.split("/")]
    if not parts[0] or len(parts) > 2 or (len(parts) == 2 and query):
        raise InboundError(
            "inbound.bad-entry",
            f"{where}: a batch of reads takes searches (Type?parameters) and reads "
            "(Type/id), relative to the FHIR base",
            expression=where,
        )
    ident = parts[1] if len(parts) == 2 else None
    params = parse_qsl(query, keep_blank_values=True)
    if any("\0" in name + value for name, value in params):
        # nothing stored holds U+0000 (refused on receipt), and PostgreSQL's text takes
        # none: a query with one would fail the whole batch, not answer this entry
        raise InboundError("inbound.bad-search", nul_message(where), expression=where)
    return Read(url, parts[0], ident, params)
