"""No conditional update overwrites another patient's resource at the partner.

Orders, studies, reports and results are written by a conditional update on their
identifier alone (``PUT ImagingStudy?identifier=system|value``, mappings/writes.yaml).
When the partner already holds a resource with that identifier for ANOTHER patient (a
Study UID reused by a PACS error, an accession or filler order number reused across
years or hospitals), the update replaces it, subject included: one patient's study
leaves their chart and appears in another's. Before a record's first part is sent,
two checks (docs/delivery.md, "No overwrite of another patient's record"):

1. **Local** (no network): each conditional update of a resource in the Patient
   compartment (it has a ``subject`` or ``patient``) is compared with what the outbox
   delivered or queued to the same partner under the same (type, identifier): when a
   row carried it for a patient sharing no patient identifier (system|value) with this
   record's, the record is held (:data:`OVERWRITE`). Identifiers and patients are
   compared by their hashes (``outbox_links``: :func:`written_links` adds the types the
   links do not keep).
2. **At the partner** (``check_overwrite``, default on): one ``batch`` of searches, each
   update's own condition and the condition of its patient's Patient entry; a resource
   the update would match whose ``subject`` is not the Patient that condition finds (or
   there is no such Patient yet, or no subject) holds the record the same way. An answer
   that cannot be read is a failed send: retried with backoff, never written blind.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

import httpx
import orjson

from ..mapping import search_escape
from ._ask import searchset_matches
from ._links import LINKED_TYPES, Link, link_ref, patient_refs
from ._send import (
    FHIR_JSON,
    REQUEST_DEADLINE,
    Answer,
    _under_deadline,
    classify_error,
    classify_response,
    read_bounded,
)

__all__ = [
    "OVERWRITE",
    "UNCHECKED",
    "Check",
    "Write",
    "ask_partner",
    "local_conflicts",
    "refusal",
    "writes_of",
    "written_links",
]

# A record whose conditional update would replace another patient's resource: held.
OVERWRITE = "delivery.identifier-other-patient"
# The partner's answer to the check could not be read: retried like a failed send.
UNCHECKED = "delivery.overwrite-unchecked"
# The element naming a resource's patient (the Patient compartment's usual two).
_PATIENT_FIELDS = ("subject", "patient")
# A literal reference to a Patient: relative, absolute, or a version of one.
_PATIENT_ID = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


@dataclass(frozen=True, slots=True)
class Write:
    """A conditional update of a resource in the Patient compartment."""

    kind: str  # its resource type
    field: str  # the element naming its patient: subject | patient
    url: str  # the update's own URL: Type?identifier=system|value
    link: Link | None  # (type, system, value) of the condition's identifier
    patients: frozenset[str]  # its patient's identifiers, hashed (_links.patient_ref)
    patient_query: str | None  # the condition that finds its patient: identifier=...
    patient_idents: frozenset[tuple[str, str]]  # its patient's (system, value)

    @property
    def system(self) -> str:
        return self.link[1] if self.link else "?"


Outcome = Literal["clear", "held", "failed"]


@dataclass(frozen=True, slots=True)
class Check:
    """What the partner said: ``clear`` (nothing of another patient's would be
    replaced), ``held`` (something would: ``refused``, each update and why) or
    ``failed`` (no answer to go by: ``answer`` says what a send answered so would mean,
    retried, held for our credentials, or dead for a refusal)."""

    outcome: Outcome
    reason: str
    answer: Answer | None = None
    refused: tuple[tuple[Write, str], ...] = ()
    batch_refused: bool = False  # asked by plain searches: the partner refused the batch


# -- what a record writes ---------------------------------------------------------------
def writes_of(parts: Sequence[Mapping[str, Any]]) -> list[Write]:
    """The conditional updates of ``parts`` (one record) whose resource names a patient."""
    entries = [e for p in parts for e in p.get("entry") or [] if isinstance(e, Mapping)]
    patients = {
        str(e.get("fullUrl")): e
        for e in entries
        if isinstance(e.get("resource"), Mapping) and e["resource"].get("resourceType") == "Patient"
    }
    found: list[Write] = []
    for entry in entries:
        resource, request = entry.get("resource"), entry.get("request")
        if not isinstance(resource, Mapping) or not isinstance(request, Mapping):
            continue
        url = str(request.get("url") or "")
        field = next((f for f in _PATIENT_FIELDS if isinstance(resource.get(f), Mapping)), None)
        if request.get("method") != "PUT" or "?" not in url or field is None:
            continue
        kind, _, query = url.partition("?")
        query_of, idents = _patient(resource[field], patients)
        found.append(
            Write(
                kind=kind,
                field=field,
                url=url,
                link=_condition_link(kind, query),
                patients=patient_refs(idents),
                patient_query=query_of,
                patient_idents=frozenset(idents),
            )
        )
    return found


def _patient(
    subject: Mapping[str, Any], patients: Mapping[str, Mapping[str, Any]]
) -> tuple[str | None, set[tuple[str, str]]]:
    """(the Patient condition that finds ``subject`` at the partner, its identifiers):
    a Patient entry of the record (its ``ifNoneExist``), a conditional reference (its
    query: what a split part refers to an earlier part by) or a logical reference."""
    reference = subject.get("reference")
    idents: set[tuple[str, str]] = set()
    query: str | None = None
    if isinstance(reference, str) and reference in patients:
        entry = patients[reference]
        idents = _idents(entry["resource"].get("identifier"))
        request = entry.get("request")
        url = str(request.get("url") or "") if isinstance(request, Mapping) else ""
        if isinstance(request, Mapping) and request.get("ifNoneExist"):
            query = str(request["ifNoneExist"])
        elif url.startswith("Patient?"):  # a Patient written by conditional update
            query = url.removeprefix("Patient?")
    elif isinstance(reference, str) and reference.startswith("Patient?"):
        query = reference.removeprefix("Patient?")
        link = _condition_link("Patient", query)
        idents = {(link[1], link[2])} if link else set()
        for entry in patients.values():  # the Patient entry of an earlier part: all of them
            request = entry.get("request")
            if isinstance(request, Mapping) and request.get("ifNoneExist") == query:
                idents |= _idents(entry["resource"].get("identifier"))
    logical = _idents([subject.get("identifier")])
    if query is None and logical:
        system, value = sorted(logical)[0]
        query = f"identifier={search_escape(system)}|{search_escape(value)}"
    return query, idents | logical


def _idents(raw: Any) -> set[tuple[str, str]]:
    return {
        (str(i["system"]), str(i["value"]))
        for i in raw or []
        if isinstance(i, Mapping) and i.get("system") and i.get("value")
    }


def _condition_link(kind: str, query: str) -> Link | None:
    """(type, system, value) of a condition ``identifier=system|value`` (as
    gateway/mapping/_bundle.py escapes it: backslash, then URL-encoding)."""
    for param in query.split("&"):
        name, _, token = param.partition("=")
        if name != "identifier":
            continue
        parts = re.split(r"(?<!\\)\|", unquote(token), maxsplit=1)
        if len(parts) == 2 and parts[0] and parts[1]:
            system, value = (re.sub(r"\\(.)", r"\1", p) for p in parts)
            return (kind, system, value)
    return None


def written_links(bundle: Mapping[str, Any]) -> dict[Link, frozenset[str]]:
    """For ``outbox_links`` (role ``writes``): each identifier of a resource the Bundle
    updates that names a patient and whose type the links do not keep already
    (``LINKED_TYPES`` are kept as ``provides``), with its patient's hashed identifiers."""
    out: dict[Link, set[str]] = {}
    for write, resource in _updated(bundle):
        if write.kind in LINKED_TYPES:
            continue
        for system, value in _idents(resource.get("identifier")):
            out.setdefault((write.kind, system, value), set()).update(write.patients)
    return {link: frozenset(p) for link, p in out.items()}


def _updated(bundle: Mapping[str, Any]) -> Iterable[tuple[Write, Mapping[str, Any]]]:
    writes = writes_of([bundle])
    if not writes:
        return []
    by_url = {w.url: w for w in writes}
    return [
        (by_url[str(e["request"]["url"])], e["resource"])
        for e in bundle.get("entry") or []
        if isinstance(e, Mapping)
        and isinstance(e.get("request"), Mapping)
        and str(e["request"].get("url")) in by_url
        and isinstance(e.get("resource"), Mapping)
    ]


# -- 1. the local guard ---------------------------------------------------------------
def local_conflicts(
    writes: Sequence[Write], others: Mapping[str, Sequence[frozenset[str] | None]]
) -> list[Write]:
    """The ``writes`` another outbox row carried for another patient: ``others`` maps
    each write's :func:`link_ref` to the patients of the rows that carried it (None or
    empty: unknown, the partner's check answers for those)."""
    out = []
    for write in writes:
        if write.link is None or not write.patients:
            continue
        theirs = others.get(link_ref(write.link), ())
        if any(p and not p & write.patients for p in theirs):
            out.append(write)
    return out


def refusal(refused: Iterable[tuple[Write, str]], row_id: int) -> str:
    """The hold's reason: for each update refused its type, field, identifier system and
    whose resource it would replace; never a value nor anything of a patient."""
    said = sorted(
        {f"{w.kind}.identifier (system {w.system}) names a {w.kind} {why}" for w, why in refused}
    )
    return (
        f"{OVERWRITE}: " + "; ".join(said) + ": its conditional update would replace that "
        "record (subject included); held, not sent: correct the identifier at its source "
        "(the corrected record goes on its own), or once the other patient's record is "
        f"corrected at the partner: gateway outbox release {row_id} (the partner is asked "
        "again)"
    )


LOCAL = (
    "this gateway queued or delivered to this partner for another patient "
    "(no patient identifier in common)"
)


# -- 2. asking the partner ------------------------------------------------------------
def ask_partner(
    client: httpx.Client,
    writes: Sequence[Write],
    now: datetime,
    max_entries: int = 0,
    *,
    batch: bool = True,
    deadline: float = REQUEST_DEADLINE,
) -> Check:
    """Search the partner for what each write's condition matches and for each write's
    patient, and decide. In one ``batch`` (several when ``max_entries`` is smaller);
    a partner refusing the batch (a 4xx with its OperationOutcome, 501: batch is
    optional in R4, and another gateway's inbound endpoint takes writes only) is asked
    by plain searches, one GET each, and so is one known to refuse it (``batch``
    False). Each request is bounded by ``deadline`` seconds in all (delivery_request_deadline,
    as a send is). The Check says whether the batch was refused."""
    urls = list(dict.fromkeys([w.url for w in writes] + [_patient_url(w) for w in writes]))
    urls = [u for u in urls if u]
    found: dict[str, list[dict[str, Any]]] = {}
    if batch:
        size = max_entries or len(urls)
        for start in range(0, len(urls), size):
            chunk = urls[start : start + size]
            answer = _in_batch(client, chunk, now, deadline)
            if answer is None:
                break  # batch refused: plain searches below
            if isinstance(answer, Check):
                return answer
            found.update(zip(chunk, answer, strict=True))
        else:
            return _decide(writes, found)
    for url in urls:
        matches = _search(client, url, now, deadline)
        if isinstance(matches, Check):
            return replace(matches, batch_refused=True)
        found[url] = matches
    return replace(_decide(writes, found), batch_refused=True)


def _patient_url(write: Write) -> str:
    return f"Patient?{write.patient_query}" if write.patient_query else ""


def _in_batch(
    client: httpx.Client, urls: list[str], now: datetime, deadline: float
) -> list[list[dict[str, Any]]] | Check | None:
    """Each URL's matches, or why there are none to read; None: the batch itself was
    refused (ask by plain searches)."""
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": url}} for url in urls],
    }
    asked = _request(
        client,
        "POST",
        "",
        deadline,
        content=orjson.dumps(batch),
        headers={"Content-Type": FHIR_JSON},
    )
    if isinstance(asked, Check):
        return asked
    status, content, cut, response = asked
    if not 200 <= status < 300:  # what it would mean for a send (docs/delivery.md)
        said = classify_response(response, now, content=content)
        if said.kind == "dead" or status == 501:
            return None
        return _failed(said)
    matches = None if cut else _searchsets(content, urls)
    if matches is None:
        reason = f"HTTP {status} without a batch-response of readable searchsets"
        return _failed(Answer("retry", reason, UNCHECKED, status))
    return matches


def _search(
    client: httpx.Client, url: str, now: datetime, deadline: float
) -> list[dict[str, Any]] | Check:
    """One plain search's matches (``GET Type?query``), or why there are none."""
    kind, _, query = url.partition("?")
    asked = _request(client, "GET", kind, deadline, params=httpx.QueryParams(query))
    if isinstance(asked, Check):
        return asked
    status, content, cut, response = asked
    if not 200 <= status < 300:
        return _failed(classify_response(response, now, content=content))
    try:
        matches = None if cut else searchset_matches(orjson.loads(content), kind)
    except orjson.JSONDecodeError:
        matches = None
    if matches is None:
        return _failed(Answer("retry", f"HTTP {status} without a searchset", UNCHECKED, status))
    return matches


def _request(
    client: httpx.Client, method: str, url: str, deadline: float, **kwargs: Any
) -> tuple[int, bytes, str | None, httpx.Response] | Check:
    """(status, body read within bounds, why it was cut, the response), or the Check
    a failure without an answer makes: GETs only, so a lost answer is retried."""
    headers = {"Accept": FHIR_JSON, **kwargs.pop("headers", {})}
    try:
        timeout = {"timeout": _under_deadline(client, deadline)}  # trickled headers too
        with client.stream(method, url, headers=headers, extensions=timeout, **kwargs) as response:
            content, cut = read_bounded(response, client.timeout.read)
    except httpx.TransportError as exc:
        sent = classify_error(exc)
        if sent.kind == "ambiguous":
            sent = Answer("retry", sent.reason, UNCHECKED)
        return _failed(sent)
    except httpx.DecodingError:
        return _failed(Answer("retry", "answer not decodable", UNCHECKED))
    return response.status_code, content, cut, response


def _failed(answer: Answer) -> Check:
    said = Answer(
        answer.kind,
        f"overwrite check: {answer.reason}",
        answer.code,
        answer.status,
        answer.body,
        answer.wait,
    )
    return Check("failed", said.reason, said)


def _searchsets(content: bytes, urls: list[str]) -> list[list[dict[str, Any]]] | None:
    """The matches of each search of a batch-response, in order; None when it is not
    one entry per search, each 2xx with a searchset (that says nothing of what the
    partner holds, so it must not count as "nothing there")."""
    try:
        bundle = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(bundle, dict) or bundle.get("type") != "batch-response":
        return None
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return None
    if len(entries) != len(urls):
        return None
    out = []
    for url, entry in zip(urls, entries, strict=True):
        if not isinstance(entry, dict) or not isinstance(entry.get("response"), dict):
            return None
        head = str(entry["response"].get("status") or "")[:3]
        if not (head.isascii() and head.isdigit() and head.startswith("2")):
            return None
        found = searchset_matches(entry.get("resource"), url.partition("?")[0])
        if found is None:
            return None
        out.append(found)
    return out


def _decide(writes: Sequence[Write], found: Mapping[str, list[dict[str, Any]]]) -> Check:
    refused: list[tuple[Write, str]] = []
    for write in writes:
        ours = {str(p.get("id")) for p in found.get(_patient_url(write)) or [] if p.get("id")}
        for resource in found.get(write.url) or []:  # none: the update creates
            why = _other(write, resource, ours)
            if why:
                refused.append((write, f"at the partner {why}"))
                break
    if refused:
        return Check("held", "overwrite check: refused", refused=tuple(refused))
    return Check("clear", f"overwrite check: {len(writes)} update(s) clear at the partner")


def _other(write: Write, resource: Mapping[str, Any], ours: set[str]) -> str | None:
    """Why ``resource`` (what ``write`` would replace) is not its patient's; None when
    it is."""
    subject = resource.get(write.field)
    if not isinstance(subject, Mapping):
        return f"without a {write.field}: its patient cannot be compared"
    reference = subject.get("reference")
    if isinstance(reference, str) and reference:
        if not ours:
            return "for another patient (the partner has no Patient this record's condition finds)"
        matched = _PATIENT_ID.search(reference)
        if matched is None or matched.group(1) not in ours:
            return "for another patient (not the Patient this record's condition finds)"
        return None
    if _idents([subject.get("identifier")]) & write.patient_idents:
        return None
    return "for another patient (no patient identifier in common)"
