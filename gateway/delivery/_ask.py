"""Resolving an ambiguous send by asking the partner.

After a read timeout or a reset the request may or may not have been applied. The
gateway never resends blindly: it searches each entry of the part by the condition the
entry itself carries (``ifNoneExist``, or a conditional update's query), as in
``GET {base}/Patient?identifier=system|value``. Every entry present (an update's
resource with the content that was sent) → the part was delivered; one absent → send
it again; the partner not answering → ask again later.

Every entry the gateway makes is conditional (docs/partners.md), so a resend would be
idempotent at the partner anyway (a conditional create finds what the first request
made; a conditional update writes the same content again). The question is still asked,
as issue #13 demands: it costs GETs only, it records what the partner holds, and it
stays right for a partner that mishandles conditional writes or for unconditional
entries, which are never resent blindly (held for a person instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

from ._send import is_fhir, read_bounded

__all__ = ["Verdict", "ask", "same_content", "searchset_matches"]

Found = Literal["present", "absent", "unreachable", "unverifiable", "refused"]
_IGNORED = frozenset({"id", "meta"})  # the partner's own: its id, versionId, lastUpdated


@dataclass(frozen=True, slots=True)
class Verdict:
    found: Found
    reason: str  # entry index, type and what the search said; never identifier values


def ask(client: httpx.Client, part: dict[str, Any]) -> Verdict:
    """What the partner holds of ``part``'s entries (stops at the first absent one)."""
    entries = part.get("entry") or []
    for n, entry in enumerate(entries):
        request = entry.get("request") or {}
        search = _search_of(request)
        if search is None:
            return Verdict("unverifiable", f"entry[{n}] has no condition to search by")
        kind, query = search
        try:  # read up to MAX_ANSWER_BYTES, as a send's answer
            with client.stream(
                "GET",
                kind,
                params=httpx.QueryParams(query),
                headers={"Accept": "application/fhir+json"},
            ) as answer:
                content, cut = read_bounded(answer, client.timeout.read)
        except (httpx.TransportError, httpx.DecodingError) as exc:
            return Verdict("unreachable", f"search for entry[{n}] failed ({type(exc).__name__})")
        if answer.status_code >= 500 or answer.status_code in (408, 429):
            return Verdict("unreachable", f"search for entry[{n}] answered {answer.status_code}")
        if answer.status_code in (401, 403):  # our credentials, not the question
            reason = f"search for entry[{n}] ({kind}) answered {answer.status_code}"
            return Verdict("refused", reason)
        if answer.status_code >= 300 and not is_fhir(content):  # a proxy's page
            reason = f"search for entry[{n}] answered {answer.status_code} without a FHIR resource"
            return Verdict("unreachable", reason)
        if answer.status_code >= 300:
            reason = f"search for entry[{n}] ({kind}) refused with {answer.status_code}"
            return Verdict("unverifiable", reason)
        matches = _matches(content, kind) if cut is None else None
        if matches is None:  # a proxy's page, an OperationOutcome, no end: no answer
            reason = (
                f"search for entry[{n}] ({kind}) answered {answer.status_code} without a searchset"
            )
            return Verdict("unreachable", reason)
        if not matches:
            return Verdict("absent", f"entry[{n}] ({kind}) not at the partner")
        if request.get("method") == "PUT" and not any(
            same_content(entry.get("resource"), m) for m in matches
        ):
            return Verdict("absent", f"entry[{n}] ({kind}) at the partner with other content")
    return Verdict("present", f"all {len(entries)} entries at the partner")


def _search_of(request: dict[str, Any]) -> tuple[str, str] | None:
    """(resource type, search query) that find the entry's resource, from its own
    condition; None when it has none (a plain create, a delete)."""
    url = str(request.get("url") or "")
    method = request.get("method")
    if method == "POST" and request.get("ifNoneExist"):
        return url, str(request["ifNoneExist"])
    if method == "PUT" and "?" in url:
        kind, _, query = url.partition("?")
        return kind, query
    if method == "PUT" and url.count("/") == 1:  # an update of Type/id: its _id
        kind, _, rid = url.partition("/")
        return kind, f"_id={rid}"
    return None


def _matches(content: bytes, kind: str) -> list[dict[str, Any]] | None:
    """The resources of ``kind`` the searchset matched; None when the answer is not a
    searchset one can read (HTML from a proxy, an OperationOutcome, malformed entries):
    that says nothing of what the partner holds, so it must not count as absent."""
    try:
        bundle = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return searchset_matches(bundle, kind)


def searchset_matches(searchset: Any, kind: str) -> list[dict[str, Any]] | None:
    """:func:`_matches` of a searchset already parsed (one of a batch-response too)."""
    if not isinstance(searchset, dict) or searchset.get("resourceType") != "Bundle":
        return None
    entries = searchset.get("entry") or []
    if searchset.get("type") != "searchset" or not isinstance(entries, list):
        return None
    out = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        search = (entry.get("search") or {}) if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(search, dict):
            return None
        if resource.get("resourceType") == kind and search.get("mode", "match") == "match":
            out.append(resource)
    return out


def same_content(sent: Any, held: Any) -> bool:
    """Whether the partner's resource holds everything that was sent. Ignored: what the
    partner assigns (``id``, ``meta``) and reference strings, which it rewrites
    (``urn:uuid:…`` and conditional references become ``Type/id``); a reference's
    ``type``, ``identifier`` and ``display`` still count. Extra elements the partner
    adds do not make a difference."""
    if isinstance(sent, dict):
        if not isinstance(held, dict):
            return False
        for key, value in sent.items():
            if key in _IGNORED and "resourceType" in sent:
                continue
            if key == "reference" and isinstance(value, str):
                continue
            if key not in held or not same_content(value, held[key]):
                return False
        return True
    if isinstance(sent, list):
        if not isinstance(held, list) or len(sent) != len(held):
            return False
        return all(same_content(a, b) for a, b in zip(sent, held, strict=True))
    if isinstance(sent, (int, float)) and isinstance(held, (int, float)):
        return float(sent) == float(held)
    return bool(sent == held)
