"""Applying a partner's transaction or batch Bundle to the stored resources, with FHIR's
semantics for what the gateway's Bundles use: create (``POST``), conditional create
(``POST`` + ``ifNoneExist``: nothing written when one resource matches), update
(``PUT Type/id``), conditional update (``PUT Type?query``: create when none matches,
update the one that does, 412 when several do); ``urn:uuid`` references between entries
and conditional references (``Patient?identifier=...``) made literal.

Absolute references (FHIR R4 bundle.html#references, http.html#trules): one equal to an
entry's ``fullUrl`` is that entry, and a relative ``Type/id`` inside an entry whose
``fullUrl`` is a server URL is that server's (``[base]/Type/id``: the entry it means
when the Bundle holds it, else read as an absolute one, never a resource of ours that
happens to have that id; in a ``urn:uuid`` entry it is ours); one under this gateway's
own base (``inbound_public_url``/fhir) is made relative and checked as a literal one;
one under the sending partner's own FHIR base (its ``base`` in the partners file) is
kept as sent (the partner's server, which the partner answers for) -- "under" as RFC
3986 §6.2.2-6.2.3 compare servers: scheme and host in any case, default port or none,
the base's trailing slash; another scheme, host, port or path is another server -- any
other is refused (``inbound.external-reference``): stored as sent, it would send local
systems that follow it to a server nobody here vouches for.

A transaction is all or nothing (the caller's database transaction); a batch applies
each entry on its own (a savepoint each) and answers each entry's outcome.
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy.engine import Connection

from ..errors import http_status, operation_outcome, shape
from ..fhirsystems import (
    DEFAULT_PORTS,
    PATIENT_NAMES,
    comparable,
    host_key,
    identifier_key,
    system_key,
    type_codes,
)
from ._errors import InboundError
from ._locks import lock_bundle
from ._resources import (
    ID_PATTERN,
    TYPE_PATTERN,
    Resources,
    Stored,
    instant,
    parse_identifier,
    patient_of,
)

__all__ = ["Applied", "Bases", "apply_bundle"]

_REASONS = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found",
            412: "Precondition Failed", 422: "Unprocessable Entity"}  # fmt: skip


@dataclass
class _Entry:
    n: int
    resource_type: str
    resource: dict[str, Any]
    full_url: str | None
    logical_id: str | None = None  # the target; None: a new resource, id assigned on write
    write: bool = True  # False: a conditional create that matched (nothing written)
    created: bool = False  # set on write: a new resource
    # A Patient matched by a condition whose identifier names no system: where the
    # condition is (it proves nothing alone: _check_same_patient)
    unproven: str | None = None
    named: bool = False  # the id is the request's (PUT Type/id), not a match's nor new


# (record (type, id), (system as compared, value), its type codes)
_Claim = tuple[tuple[str, str], tuple[str, str], frozenset[str]]


@dataclass
class _Patients:
    """What a Bundle's patient references are checked against besides the stored
    Patients (docs/inbound.md, "one patient"): a ``Patient/<id>`` that nothing stored
    holds, nor this Bundle writes, has no identifiers to confirm one written beside it,
    so those written beside it (in this Bundle's records and those kept before) must
    agree with each other, and a Patient later stored under that id must hold them."""

    # Patient id -> claims written beside references to it by this Bundle's entries
    # (those kept before are looked up in the store: Resources.claims_against)
    claims: dict[str, list[_Claim]] = field(default_factory=dict)
    entry_ids: dict[str, int] = field(default_factory=dict)  # a Patient entry's id -> n
    targets: dict[int, str] = field(default_factory=dict)  # entry n -> where it is written
    # Patient id -> unstored, and another institution's records are kept under it
    shared: dict[str, bool] = field(default_factory=dict)
    # (type, id) of the records a transaction writes: their patient is the Bundle's
    # (the one-patient check), whatever their stored version says (_check_linked)
    rewritten: set[tuple[str, str]] = field(default_factory=set)
    # Patient id -> the identifiers of this Bundle's entries written to it (the index's,
    # one pass over it per id, not per reference)
    entry_names: dict[str, set[tuple[str, str]]] = field(default_factory=dict)

    def replaced(self, record: tuple[str, str]) -> None:
        """``record`` is written again: what its earlier version (or an earlier entry
        of the Bundle) wrote beside a patient reference no longer stands (a corrected
        MRN, then another record with the corrected one, is no second patient)."""
        for claims in self.claims.values():
            claims[:] = [claim for claim in claims if claim[0] != record]


@dataclass(frozen=True)
class Bases:
    """Where an absolute reference of a partner's Bundle may point besides its entries:
    this gateway's FHIR base (made relative) and the sending partner's own (kept)."""

    own: str | None = None  # inbound_public_url + "/fhir"; None: unset
    partner: Callable[[], str | None] = lambda: None  # looked up only when one is met


@dataclass
class Applied:
    """What a Bundle did: the response Bundle and the versions it wrote."""

    response: dict[str, Any]
    written: list[Stored] = field(default_factory=list)
    status: int = 200


def apply_bundle(
    conn: Connection,
    store: Resources,
    bundle: dict[str, Any],
    partner: str,
    bundle_id: int | None,
    now: datetime,
    bases: Bases | None = None,
) -> Applied:
    """Apply ``bundle`` (a transaction or batch) on ``conn``. A transaction raises an
    InboundError on the first entry that fails (the caller rolls back). ``bases``: where
    its absolute references may point (none: only to its own entries)."""
    bases = bases or Bases()
    kind = bundle.get("type")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InboundError(
            "inbound.bad-bundle", "Bundle.entry is not a list", expression="Bundle.entry"
        )
    lock_bundle(conn, entries, partner)  # PostgreSQL: before any look-up (_locks.py)
    if kind == "transaction":
        # Every entry is planned against the store as it was before the Bundle, so the
        # conditions' look-ups can be one statement, and the targets' current versions
        # another (a write keeps ``known`` up to date for a later entry of the same id).
        _check_distinct(entries)
        matches = store.find_identifiers(conn, _conditions(entries), partner)
        plans = [_plan(conn, store, n, e, partner, matches) for n, e in enumerate(entries)]
        stored_ids = {(p.resource_type, p.logical_id) for p in plans if p.logical_id}
        known: dict[tuple[str, str], Stored | None] = dict.fromkeys(stored_ids)
        known.update(store.current_many(conn, stored_ids))
        for plan in plans:  # every target known before any reference is made literal
            if plan.logical_id is None:
                plan.logical_id = str(uuid.uuid4())
                known[(plan.resource_type, plan.logical_id)] = None  # new: nothing to read
        urls = {p.full_url: f"{p.resource_type}/{p.logical_id}" for p in plans if p.full_url}
        index = _identifier_index(plans)
        patients = _Patients(entry_ids=_entry_ids(entries))
        patients.targets = {
            p.n: str(p.logical_id) for p in plans if p.n in patients.entry_ids.values()
        }
        patients.rewritten = {(p.resource_type, str(p.logical_id)) for p in plans if p.write}
        written: list[Stored] = []
        out = []
        for plan in plans:
            stored = _write(conn, store, plan, urls, index, partner, bundle_id, now, bases,
                            patients, known)  # fmt: skip
            if stored is not None and plan.write:
                written.append(stored)
            out.append(_response_entry(plan, stored))
        return Applied(_response_bundle("transaction-response", out), written)
    applied = Applied(_response_bundle("batch-response", []))
    patients = _Patients(entry_ids=_entry_ids(entries))
    for n, entry in enumerate(entries):
        savepoint = conn.begin_nested()
        try:
            plan = _plan(conn, store, n, entry, partner)
            stored = _write(conn, store, plan, {}, {}, partner, bundle_id, now, bases, patients)
        except InboundError as exc:
            savepoint.rollback()
            # what the entry read or claimed is undone: read the store again (its
            # replaced record's identifiers still stand)
            patients.claims.clear()
            if exc.code == IDENTITY_MISMATCH:
                raise  # two patients in one Bundle: refused whole, a batch too
            status = http_status([exc.issue])
            applied.response["entry"].append(
                {"response": {"status": f"{status} {_REASONS[status]}",
                              "outcome": operation_outcome([exc.issue])}}
            )  # fmt: skip
            continue
        savepoint.commit()
        if plan.logical_id is not None and n in patients.entry_ids.values():
            patients.targets[n] = plan.logical_id  # references after it may name its id
        if stored is not None and plan.write:
            applied.written.append(stored)
        applied.response["entry"].append(_response_entry(plan, stored))
    return applied


def _check_distinct(entries: list[Any]) -> None:
    """A transaction names each resource once (FHIR http.html#trules): two entries with
    the same condition, or updating the same Type/id, were both planned against the
    store as it was before, and stored two resources where the condition promised one
    (every later condition on them then matched two: 412 for good)."""
    seen: set[tuple[str, str]] = set()
    for n, entry in enumerate(entries):
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict) or request.get("method") not in ("POST", "PUT"):
            continue
        path, _, query = str(request.get("url") or "").partition("?")
        if request.get("method") == "POST":
            if not request.get("ifNoneExist"):
                continue  # a plain create: a new resource each
            query = str(request["ifNoneExist"])
        key = (path, f"?{query}" if query else "")
        if key in seen:
            where = f"Bundle.entry[{n}].request"
            raise InboundError(
                "inbound.bad-entry",
                f"{where} names the same resource as an earlier entry of the transaction "
                "(same condition or Type/id): each resource once",
                expression=where,
            )
        seen.add(key)


def _conditions(entries: list[Any]) -> list[tuple[str, str]]:
    """(type, query) of each entry's condition (``ifNoneExist``, ``PUT Type?query``),
    for one look-up of them all; malformed entries are left to ``_plan`` to refuse."""
    out = []
    for entry in entries:
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        path, _, query = str(request.get("url") or "").partition("?")
        if request.get("method") == "POST" and request.get("ifNoneExist") and not query:
            out.append((path, str(request["ifNoneExist"])))
        elif request.get("method") == "PUT" and query:
            out.append((path, query))
    return out


def _find(
    conn: Connection,
    store: Resources,
    resource_type: str,
    query: str,
    matches: dict[tuple[str, str], list[str]] | None,
    partner: str,
    where: str,
) -> list[str]:
    """What a condition matches among the partner's own resources: another's (or one
    made here, a referral Task) is never updated, nor taken for this one's. A condition
    the gateway cannot match on is refused naming ``where`` (the entry's element)."""
    if matches is not None and (resource_type, query) in matches:
        return matches[(resource_type, query)]
    try:
        return store.find(conn, resource_type, query, partner=partner)
    except InboundError as exc:
        raise InboundError(exc.code, f"{where}: {exc.issue.message}", expression=where) from None


def _plan(
    conn: Connection,
    store: Resources,
    n: int,
    entry: Any,
    partner: str,
    matches: dict[tuple[str, str], list[str]] | None = None,
) -> _Entry:
    """Where entry ``n`` goes: a new resource, a stored one to update, or (a matched
    conditional create) nothing to write. ``matches``: conditions already looked up."""
    where = f"Bundle.entry[{n}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
        raise InboundError(
            "inbound.bad-entry", f"{where} holds no resource", expression=f"{where}.resource"
        )
    resource: dict[str, Any] = entry["resource"]
    given = entry.get("request")
    request: dict[str, Any] = given if isinstance(given, dict) else {}
    method, url = str(request.get("method") or ""), str(request.get("url") or "")
    resource_type = str(resource.get("resourceType") or "")
    path, _, query = url.partition("?")
    target_type, _, target_id = path.partition("/")
    if method not in ("POST", "PUT"):
        raise InboundError(
            "inbound.unsupported-request",
            f"{where}.request.method {shape(method, 8)}: the inbound endpoint takes POST "
            "(create, conditional create) and PUT (update, conditional update)",
            expression=f"{where}.request.method",
        )
    if not TYPE_PATTERN.fullmatch(resource_type) or target_type != resource_type:
        raise InboundError(
            "inbound.bad-entry",
            f"{where}.request.url does not name the resource's type {resource_type!r}",
            expression=f"{where}.request.url",
        )
    full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
    plan = _Entry(n, resource_type, resource, full_url)
    if method == "POST":
        condition = request.get("ifNoneExist")
        if target_id or query:
            raise InboundError(
                "inbound.bad-entry",
                f"{where}.request.url: a create names only the type",
                expression=f"{where}.request.url",
            )
        if condition:
            found = _find(conn, store, resource_type, str(condition), matches, partner,
                          f"{where}.request.ifNoneExist")  # fmt: skip
            _match(plan, found, where, update=False)
            plan.unproven = _systemless(plan, str(condition), f"{where}.request.ifNoneExist")
        return plan
    if query:
        found = _find(conn, store, resource_type, query, matches, partner, f"{where}.request.url")
        _match(plan, found, where, update=True)
        plan.unproven = _systemless(plan, query, f"{where}.request.url")
    elif ID_PATTERN.fullmatch(target_id) and _DOT_SEGMENT.search(target_id) is None:
        plan.logical_id = target_id
        plan.named = True
    else:
        raise InboundError(
            "inbound.bad-entry",
            f"{where}.request.url: an update names Type/id or Type?query",
            expression=f"{where}.request.url",
        )
    return plan


def _match(plan: _Entry, found: list[str], where: str, *, update: bool) -> None:
    if len(found) > 1:
        raise InboundError(
            "inbound.multiple-matches",
            f"{where}: the condition matches {len(found)} stored {plan.resource_type} "
            "resources (one at most)",
            expression=f"{where}.request",
        )
    if found:
        plan.logical_id = found[0]
        plan.write = update


def _systemless(plan: _Entry, query: str, where: str) -> str | None:
    """``where`` when ``plan`` is a Patient that its condition matched to a stored one
    by an identifier without a system (``identifier=value``: that value in any system;
    ``identifier=|value``) and by no ``_id``: a value alone does not say whose it is."""
    if plan.resource_type != "Patient" or plan.logical_id is None:
        return None
    return where if _value_alone(query) else None


def _value_alone(query: str) -> bool:
    """Whether a condition finds by identifiers without a system only (no ``_id``)."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(name == "_id" for name, _ in pairs):
        return False
    tokens = [parse_identifier(value) for name, value in pairs if name == "identifier"]
    return bool(tokens) and not any(system for system, _ in tokens)


def _identifier_index(plans: list[_Entry]) -> dict[tuple[str, str, str], str | None]:
    """(type, system as compared, value) → the planned target of the Bundle's own
    entries, for conditional references to resources the same transaction creates
    (a reference spelling the entry's system otherwise is to that entry too)."""
    index: dict[tuple[str, str, str], str | None] = {}
    for plan in plans:
        for ident in plan.resource.get("identifier") or []:
            if isinstance(ident, dict) and ident.get("value"):
                index[(plan.resource_type, *identifier_key(ident))] = plan.logical_id
    return index


def _write(
    conn: Connection,
    store: Resources,
    plan: _Entry,
    urls: dict[str, str],
    index: dict[tuple[str, str, str], str | None],
    partner: str,
    bundle_id: int | None,
    now: datetime,
    bases: Bases,
    patients: _Patients,
    known: dict[tuple[str, str], Stored | None] | None = None,
) -> Stored | None:
    if not plan.write:
        key = (plan.resource_type, str(plan.logical_id))
        if known is not None and key in known:
            matched = known[key]
        else:
            matched = store.current(conn, plan.resource_type, str(plan.logical_id))
        _check_same_patient(plan, matched)
        _check_matched_record(plan, matched, urls)
        return matched
    if plan.logical_id is None:  # a create: its id is known before any reference to it
        plan.logical_id = str(uuid.uuid4())
        if plan.full_url:
            urls[plan.full_url] = f"{plan.resource_type}/{plan.logical_id}"
    else:
        known = _check_owner(conn, store, plan, partner, known)
        current = known[(plan.resource_type, plan.logical_id)]
        _check_same_patient(plan, current)
        if plan.named and current is None:
            _check_kept_under(conn, store, plan, partner)
        elif current is not None and plan.resource_type == "Patient":
            _check_renamed(conn, store, plan, current)
    patients.replaced((plan.resource_type, str(plan.logical_id)))
    resource = copy.deepcopy(plan.resource)
    resource.pop("id", None)
    linked: list[tuple[str, tuple[str, str]]] = []  # (element, the record it names)
    base = entry_base(plan.full_url)  # once an entry: a fullUrl may be long
    for where, ref in _references(resource, f"Bundle.entry[{plan.n}].resource"):
        given = _in_bundle(str(ref["reference"]), base, urls, where, bases, partner)
        ref["reference"] = _resolve(conn, store, given, urls, index, where, partner, known)
        # every reference to a Patient, at any depth (an asserter, a performer, an
        # evidence detail, a contained resource's subject), not only the element naming
        # whom the record is about: an identifier beside any of them is kept with the
        # record (and written beside it, ``inbound_beside``) as that patient's
        literal = _LITERAL.fullmatch(str(ref["reference"]))
        if literal is not None and literal[1] == "Patient":
            _check_entry_id(ref, where, patients)
            _check_not_shared(conn, store, ref, where, partner, known, patients)
            if isinstance(ref.get("identifier"), dict):
                _check_reference_identity(conn, store, ref, where, index, known, plan, patients)
        elif literal is not None:
            linked.append((where, (literal[1], literal[2])))
    _check_linked(conn, store, resource, [x for x in linked if x[1] not in patients.rewritten],
                  known)  # fmt: skip
    stored, written = store.write(
        conn, resource, logical_id=plan.logical_id, partner=partner, bundle_id=bundle_id,
        now=now, known=known,
    )  # fmt: skip
    plan.created = written and stored.version == 1
    plan.write = written
    return stored


IDENTITY_MISMATCH = "inbound.identity-mismatch"


def _pairs(resource: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(system as compared, value) of a resource's identifiers that have both: one
    system however it is spelled (``gateway/fhirsystems.py``: ``…/mrn/`` is ``…/mrn``)."""
    found = (resource or {}).get("identifier")
    return comparable(found if isinstance(found, list) else [], systemless=False)


def _written(resource: dict[str, Any]) -> set[tuple[str, str]]:
    """(system as compared, value) of a resource's identifiers: '' for no system."""
    found = resource.get("identifier")
    return comparable(found if isinstance(found, list) else [])


def _conflicting(mine: set[tuple[str, str]], theirs: set[tuple[str, str]]) -> bool:
    """Two patients by their identifiers: a system both name with no value in common
    (another MRN under the same hospital's system). Other systems say nothing."""
    systems = {s for s, _ in mine} & {s for s, _ in theirs}
    return any(
        not {v for s, v in mine if s == system} & {v for s, v in theirs if s == system}
        for system in systems
    )


def _check_same_patient(plan: _Entry, stored: Stored | None) -> None:
    """A Patient entry matched (by its condition, or its Type/id) to a stored Patient
    whose identifiers name another patient is refused: the Bundle's records would be
    joined to that patient's, and an update would merge two patients into one. So is
    one its condition matched by an identifier without a system, unless the two share
    an identifier with one: a value alone proves nothing (another hospital's number,
    another patient's), and the records would join whichever patient holds it.
    Systems are compared however they are spelled (``gateway/fhirsystems.py``): as written,
    ``…/mrn/`` was another system than ``…/mrn``, nothing to compare, and another
    patient's MRN went by."""
    if plan.resource_type != "Patient" or stored is None:
        return
    mine, theirs = _pairs(plan.resource), _pairs(stored.resource)
    if plan.unproven is not None and not mine & theirs:
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{plan.unproven}: the condition matched a stored Patient by an identifier "
            "without a system, and the entry shares no identifier with a system with it: "
            "a value alone does not prove the patient (send the identifier's system); a "
            "record carries one patient's data; nothing is stored",
            expression=plan.unproven,
        )
    if _conflicting(mine, theirs):
        where = f"Bundle.entry[{plan.n}].resource.identifier"
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} names another patient than the stored Patient its request matches "
            "(an identifier system both name, no value in common): a record carries one "
            "patient's data; nothing is stored",
            expression=where,
        )


def _entry_ids(entries: list[Any]) -> dict[str, int]:
    """``id`` → n of the Bundle's Patient entries that carry one (``_content.py`` takes
    a reference ``Patient/<that id>`` for that entry)."""
    out: dict[str, int] = {}
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "Patient"
            and isinstance(resource.get("id"), str)
        ):
            out[str(resource["id"])] = n
    return out


def _check_matched_record(plan: _Entry, matched: Stored | None, urls: dict[str, str]) -> None:
    """A conditional create that matched a stored record of another patient than the
    one the entry names (its subject an entry of this Bundle, or a ``Patient/<id>``)
    is refused: nothing was written, and the Bundle's references to the entry became
    references to that patient's record (陈美玲's referral naming 许嘉玮's diagnoses
    as its reasons), while her diagnosis was silently not kept."""
    theirs = matched.patient if matched is not None else None
    if plan.resource_type == "Patient" or theirs is None or not theirs.startswith("Patient/"):
        return  # a logical patient (``system|value``) is not compared here
    named = copy.deepcopy(plan.resource)
    for name in PATIENT_NAMES:
        ref = named.get(name)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            ref["reference"] = urls.get(ref["reference"], ref["reference"])
    mine = patient_of(named)
    if mine is not None and mine.startswith("Patient/") and mine != theirs:
        where = f"Bundle.entry[{plan.n}].request.ifNoneExist"
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} matches a stored {plan.resource_type} of another patient than the "
            "entry's: the Bundle's references to the entry would name that patient's "
            "record; a record carries one patient's data; nothing is stored",
            expression=where,
        )


def _check_linked(
    conn: Connection,
    store: Resources,
    resource: dict[str, Any],
    linked: list[tuple[str, tuple[str, str]]],
    known: dict[tuple[str, str], Stored | None] | None,
) -> None:
    """A record about ``Patient/<id>`` whose literal reference names a stored record
    about another ``Patient/<id>`` (an evidence ``detail``, an ``encounter``, a
    ``basedOn``) is refused: 陈美玲's diagnosis with 许嘉玮's stored diagnosis as its
    evidence was kept, and whoever follows the link reads his data in her record. The
    one-patient check sees the Bundle's entries only; a record this Bundle writes is
    that check's (its stored version not yet, or its patient the Bundle's): not given
    here, in any order (two records moved to the right patient together, the citing
    one first, were refused against the cited one's stored version). A logical
    patient (``system|value``) on either side is not compared here."""
    mine = patient_of(resource)
    if mine is None or not mine.startswith("Patient/"):
        return
    for where, key in linked:
        target = known[key] if known is not None and key in known else store.current(conn, *key)
        theirs = target.patient if target is not None else None
        if theirs is not None and theirs.startswith("Patient/") and theirs != mine:
            raise InboundError(
                IDENTITY_MISMATCH,
                f"{where} names a stored {key[0]} of another patient than this record's: "
                "a record carries one patient's data; nothing is stored",
                expression=where,
            )


def _check_entry_id(ref: dict[str, Any], where: str, patients: _Patients) -> None:
    """A patient reference ``Patient/<id>`` naming the Bundle's Patient entry by that
    entry's ``id`` (``_content.py`` compared its identifiers with the entry's) must be
    where that entry is stored: a create (``POST``) gets a new id, and a condition may
    match a stored Patient of another id. Else the record was kept under an id no
    Patient held (one the partner may later create for another patient), or under
    another stored patient: refused, naming the reference."""
    literal = _LITERAL.fullmatch(str(ref["reference"]))
    if literal is None or literal[1] != "Patient" or literal[2] not in patients.entry_ids:
        return
    n = patients.entry_ids[literal[2]]
    if patients.targets.get(n) == literal[2]:
        return
    raise InboundError(
        IDENTITY_MISMATCH,
        f"{where} names the Patient of Bundle.entry[{n}] by that entry's id, but the entry "
        "is stored under another id (a create gets a new one; its condition may match "
        "another stored Patient): the record would name another patient, or one nobody "
        "holds; refer to the entry by its fullUrl; nothing is stored",
        expression=where,
    )


def _check_not_shared(
    conn: Connection,
    store: Resources,
    ref: dict[str, Any],
    where: str,
    partner: str,
    known: dict[tuple[str, str], Stored | None] | None,
    patients: _Patients,
) -> None:
    """A ``Patient/<id>`` nothing stored holds, under which another institution's
    records are already kept, is refused: each partner names its own patients, so
    NJMU2's ``Patient/p-1`` and NSCH's are two patients, yet their records would be
    kept (and searched, ``patient=p-1``) as one's, whatever identifier is written
    beside them (as a Patient created under that id is refused: _check_kept_under).
    Looked up once per id and Bundle: the current version, then one row at most."""
    literal = _LITERAL.fullmatch(str(ref["reference"]))
    if literal is None or literal[1] != "Patient":
        return
    if literal[2] not in patients.shared:
        key = ("Patient", literal[2])
        target = known[key] if known is not None and key in known else store.current(conn, *key)
        patients.shared[literal[2]] = target is None and store.kept_by_others(
            conn, f"Patient/{literal[2]}", partner
        )
    if patients.shared[literal[2]]:
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} names a Patient id no Patient is stored under, that records another "
            "institution sent already refer to: each institution names its own patients, "
            "and these records would be kept as the same patient's as theirs; send the "
            "Patient, or refer to it by its fullUrl; nothing is stored",
            expression=where,
        )


def _check_reference_identity(
    conn: Connection,
    store: Resources,
    ref: dict[str, Any],
    where: str,
    index: dict[tuple[str, str, str], str | None],
    known: dict[tuple[str, str], Stored | None] | None,
    plan: _Entry,
    patients: _Patients,
) -> None:
    """A patient Reference resolved to ``Patient/<id>`` whose ``identifier`` is none of
    that Patient's (the stored one, and the Bundle's entry written to it), as written
    (one without a system is the target's only when it holds it without one too; a
    stored Patient's without a system are its identifiers too, else one holding only
    those let any identifier by; systems however they are spelled): the identifier
    beside the reference names another patient. A Patient that holds no identifier at
    all cannot confirm one either: any number went by beside it (another stored
    patient's MRN, kept with the record of this one), as ``_content.py`` refuses one
    beside a Patient entry holding none. A Patient that is neither stored nor this
    Bundle's cannot confirm one: :func:`_check_unstored`."""
    literal = _LITERAL.fullmatch(str(ref["reference"]))
    ident = ref["identifier"]
    if literal is None or literal[1] != "Patient" or not ident.get("value"):
        return
    key = ("Patient", literal[2])
    target = known[key] if known is not None and key in known else store.current(conn, *key)
    if literal[2] not in patients.entry_names:  # the index is the Bundle's: read it once
        patients.entry_names[literal[2]] = {
            (s, v) for (t, s, v), i in index.items() if t == "Patient" and i == literal[2]
        }
    names = set(patients.entry_names[literal[2]])
    if target is None and not names:
        _check_unstored(
            conn,
            store,
            literal[2],
            (identifier_key(ident), type_codes(ident)),
            where,
            plan,
            patients,
        )
        return
    if target is not None:
        names |= _written(target.resource)
    if identifier_key(ident) in names:
        return
    raise InboundError(
        IDENTITY_MISMATCH,
        f"{where}.identifier names another patient than the Patient its reference "
        "resolves to (or that Patient holds no identifier to confirm it): a record "
        "carries one patient's data; nothing is stored",
        expression=f"{where}.identifier",
    )


def _check_unstored(
    conn: Connection,
    store: Resources,
    patient_id: str,
    written: tuple[tuple[str, str], frozenset[str]],
    where: str,
    plan: _Entry,
    patients: _Patients,
) -> None:
    """An identifier beside a reference to ``Patient/<patient_id>``, a Patient nothing
    stored holds and this Bundle does not write: nothing can confirm it, but it must
    not contradict the others written beside that reference -- in this Bundle's
    records, and in those a partner sent before (the current versions; the record
    this entry updates is replaced, so its old one is not held against it): another
    value of the same system (however spelled) is another patient, both kept under
    one id. A value without a system contradicts only another without one of the
    same type code (two MRs, ``0098765`` and ``0011111``: two patients' numbers, kept
    as one's); else it names no system, nothing to compare. A Patient later stored
    under that id must hold them all (:func:`_check_kept_under`). Those kept before are
    looked up for this identifier alone (the few of its system with another value), not
    read record by record (2,000 records under one id: ~33 ms a Bundle on SQLite)."""
    record, (key, types) = (plan.resource_type, str(plan.logical_id)), written
    kept = store.claims_against(conn, f"Patient/{patient_id}", key, record)
    claims = patients.claims.setdefault(patient_id, [])
    theirs = [*kept, *((k, t) for _, k, t in claims)]
    if any(_contradicts(key, types, k, t) for k, t in theirs):
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where}.identifier names another patient than an identifier of the same "
            "system (or, without one, of the same type) written beside the same reference "
            "in another record (of this Bundle, or kept before): no Patient is stored "
            "under that id to say which is its; a record carries one patient's data; "
            "nothing is stored",
            expression=f"{where}.identifier",
        )
    claims.append((record, key, types))


def _contradicts(
    key: tuple[str, str], types: frozenset[str], other: tuple[str, str], others: frozenset[str]
) -> bool:
    """Two identifiers beside one reference name two patients: another value of the
    same system (as compared), or, both without a system, of a type code in common."""
    (system, value), (other_system, other_value) = key, other
    if system != other_system or value == other_value:
        return False
    return bool(system) or bool(types & others)


def _check_kept_under(conn: Connection, store: Resources, plan: _Entry, partner: str) -> None:
    """A Patient created under the id its request names (``PUT Patient/<id>``, nothing
    stored there) becomes the patient of every record already kept under that id
    (``Patient/<id>`` was referred to before it existed): each must be this partner's
    (another institution's record would join this partner's patient), and each
    identifier written beside those references must be one of the new Patient's (as
    a reference to a stored Patient must: else the earlier records keep another
    patient's number, another MRN, with this patient's data)."""
    if plan.resource_type != "Patient":
        return
    patient = f"Patient/{plan.logical_id}"
    if store.kept_by_others(conn, patient, partner):
        where = f"Bundle.entry[{plan.n}].request.url"
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} names a Patient id that records another institution sent already "
            "refer to: this Patient would become the patient of their records; a "
            "record carries one patient's data; nothing is stored",
            expression=where,
        )
    if not store.kept_beside(conn, patient) <= _written(plan.resource):
        where = f"Bundle.entry[{plan.n}].resource.identifier"
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} lacks an identifier written beside a reference to this Patient's "
            "id in a record kept before it was stored (another MRN: another patient): "
            "a record carries one patient's data; nothing is stored",
            expression=where,
        )


def _check_renamed(conn: Connection, store: Resources, plan: _Entry, current: Stored) -> None:
    """An update of a stored Patient whose identifiers change must not contradict an
    identifier written beside the records kept under it (another value of a system
    both name): compared with the stored version alone, dropping 许嘉玮's MRN (no
    system in common with what stays) and then adding 陈美玲's made the records kept
    with 许嘉玮's MRN beside them hers. Read only when the identifiers change."""
    mine = _written(plan.resource)
    if mine == _written(current.resource):
        return
    kept = {found for found in store.kept_beside(conn, f"Patient/{plan.logical_id}") if found[0]}
    if _conflicting(mine, kept):
        where = f"Bundle.entry[{plan.n}].resource.identifier"
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where} names another patient than an identifier written beside a reference "
            "to this Patient in a record kept under it (an identifier system both name, no "
            "value in common): a record carries one patient's data; nothing is stored",
            expression=where,
        )


def _check_owner(
    conn: Connection,
    store: Resources,
    plan: _Entry,
    partner: str,
    known: dict[tuple[str, str], Stored | None] | None,
) -> dict[tuple[str, str], Stored | None]:
    """Refuse an update of a resource another institution sent, or this gateway made
    (a referral Task: the sender would accept its own referral). Returns ``known``
    holding the target's current version, so the write does not read it again."""
    key = (plan.resource_type, str(plan.logical_id))
    if known is None:
        known = {}
    if key not in known:
        known[key] = store.current(conn, *key)
    current = known[key]
    if current is not None and current.partner != partner:
        where = f"Bundle.entry[{plan.n}].request.url"
        raise InboundError(
            "inbound.wrong-sender",
            f"{where} names a {plan.resource_type} that another institution sent or this "
            "gateway made: a partner updates only what it sent",
            expression=where,
            issue_type="forbidden",
        )
    return known


_LITERAL = re.compile(
    r"([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


def _references(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Reference-like dict (one with a ``reference`` string) inside ``node``, with
    its FHIRPath-like place."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                yield from _references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for n, item in enumerate(node):
            yield from _references(item, f"{path}[{n}]")


# An id or version of "." or ".." fits R4's id pattern, but as a URL it is a dot segment
# (RFC 3986 §5.2.4): ``Patient/..`` is the base itself and ``Patient/.`` the Patient type
# (a search of every patient) to whatever follows it, while the store kept records under
# a ``Patient/..`` collecting the identifiers written beside it. Refused as a reference
# and as an update's ``Type/id``.
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")  # an absolute URI (RFC 3986 scheme)


def _in_bundle(
    ref: str, base: str | None, urls: dict[str, str], where: str, bases: Bases, partner: str
) -> str:
    """A reference before it is resolved against the store: an absolute one made
    relative (this gateway's base), kept (the partner's base) or refused (any other);
    a relative ``Type/id`` inside an entry whose fullUrl is a server URL of ``base``
    is that server's (:func:`read_against`), then read as an absolute one: the Bundle's
    entry, ours, the partner's or refused. It fell back to this gateway's ``Type/id`` when no
    entry had that URL, so ``Patient/X`` in ``https://<partner>/fhir/Condition/1`` (the
    partner's Patient X) was stored as the Patient X stored here, another patient."""
    if ref in urls or ref.startswith(("urn:uuid:", "#")):
        return ref  # an entry, or refused as no entry's fullUrl next; a contained one
    ref = read_against(ref, base)
    if ref in urls or _SCHEME.match(ref) is None:
        return ref
    spelled = _entry_spelled(ref, urls)
    if spelled is not None:
        return spelled
    tail = own_relative(ref, bases.own)
    if tail is not None:
        return tail  # this gateway's: checked as a relative reference next
    tail = _under(ref, bases.partner())
    if tail is not None and _LITERAL.fullmatch(tail) is not None:
        return ref  # the partner's own server: kept as sent, nothing here to resolve
    raise InboundError(
        "inbound.external-reference",
        f"{where}: an absolute reference (or a relative one read against its entry's "
        "server fullUrl) to no entry of the Bundle, neither under this gateway's base "
        f"nor a Type/id under {partner}'s own FHIR base (the partners file): a partner "
        "refers to its Bundle's entries, to what it sent here, or to its own server",
        expression=where,
    )


def entry_base(full_url: str | None) -> str | None:
    """The base a relative ``Type/id`` inside the entry at ``full_url`` is read against
    (FHIR R4 bundle.html#references): the ``[base]`` of a server fullUrl
    ``[base]/Type/id``; None for any other (a urn:uuid, none): the receiving server's
    (http.html#trules). Split from the end, once an entry, not for each of its
    references (a regex ``(.+)/Type/id`` walked a 1 MB fullUrl for each, ~20 ms)."""
    path, _, ident = (full_url or "").rpartition("/")
    base, _, kind = path.rpartition("/")
    if _SCHEME.match(base) is None or _LITERAL.fullmatch(f"{kind}/{ident}") is None:
        return None
    return base


def read_against(ref: str, base: str | None) -> str:
    """A relative ``Type/id`` (or ``Type/id/_history/v``) as FHIR R4 reads it inside an
    entry whose fullUrl is a server URL of ``base`` (:func:`entry_base`): that
    server's resource, ``base/Type/id``, whether or not the Bundle holds it. Any other
    reference as written: in an entry without such a fullUrl (``base`` None) it is
    the receiving server's; a conditional one is always resolved here; a dot segment
    is refused as written (:func:`_refuse_spelling`)."""
    return f"{base}/{ref}" if base is not None and read_relative(ref) else ref


def read_relative(ref: str) -> bool:
    """Whether ``ref`` is a relative ``Type/id`` that :func:`read_against` reads
    against its entry's server base."""
    return _LITERAL.fullmatch(ref) is not None and _DOT_SEGMENT.search(ref) is None


def reference_key(ref: str, own: str | None) -> str:
    """One spelling of the resource a literal reference names, to tell whether two
    name the same one (``_content.py``): this gateway's (relative, or under its base
    ``own`` however spelled: :func:`own_relative`) as ``Type/id``; another server's as
    its URL with the server as :func:`_server` compares them and the base's trailing
    slash dropped (``HTTPS://Partner:443/fhir//Patient/X`` is
    ``https://partner/fhir/Patient/X``), never this gateway's ``Patient/X``; no
    ``_history``. Any other reference (conditional, urn, malformed) as written. Read
    :func:`read_against` first for a reference inside an entry."""
    head = ref.split("/_history/", 1)[0]
    mine = own_relative(head, own)
    if mine is not None:
        return mine
    theirs = _server(head) if _SCHEME.match(head) is not None else None
    if theirs is None:
        return head
    (scheme, host), rest = theirs
    path, _, ident = rest.rpartition("/")
    base, _, kind = path.rpartition("/")
    if _LITERAL.fullmatch(f"{kind}/{ident}") is None:
        return f"{scheme}://{host}{rest}"
    return f"{scheme}://{host}{base.rstrip('/')}/{kind}/{ident}"  # the base's slash, as _under


def _entry_spelled(ref: str, urls: dict[str, str]) -> str | None:
    """The fullUrl of the Bundle's entry that ``ref`` names spelled another way (the
    host or scheme in capitals, the default port written: one URL as RFC 3986
    §6.2.2-6.2.3 compare them, as :func:`_under` compares bases). Taken for no entry,
    one under the partner's base was kept as sent, so no identity check saw it: another
    patient's MRN beside a subject naming the Bundle's Patient entry was stored with
    the record. Only references no fullUrl holds as written come here (rare): each
    entry's fullUrl is compared then."""
    theirs = _server(ref)
    if theirs is None:
        return None
    # the path as written ends both: a string test first, the server parsed only then
    # (a Bundle of absolute references to the partner's server passes here for each)
    return next((u for u in urls if u.endswith(theirs[1]) and _server(u) == theirs), None)


_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # no character of a URI's server (RFC 3986)


def _server(url: str) -> tuple[tuple[str, str], str] | None:
    """An http(s) URL's server, as RFC 3986 §6.2.2-6.2.3 compare them (scheme and host
    in lower case, the port as :func:`host_key` has it, as identifier systems are
    compared), and the rest of it as written (path, query, fragment); None for another
    scheme, user information (``https://gw@evil/``) or an unreadable port (what
    ``urlsplit`` refuses: letters, out of range), where an identifier system is not
    refused but compared. A space or control character in the server (no URI: RFC 3986)
    is none either: ``urlsplit`` drops a tab or line break, so ``https://g<TAB>w/fhir``
    was read as ``https://gw/fhir``, this gateway's base."""
    found = _AUTHORITY.fullmatch(url)
    if found is None:
        return None
    scheme, authority = found[1].lower(), found[2]
    if scheme not in DEFAULT_PORTS or "@" in authority or _UNSAFE.search(authority):
        return None
    try:
        parts = urlsplit(f"{scheme}://{authority}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return (scheme, host_key(scheme, parts.hostname, port)), found[3]


def own_relative(ref: str, own: str | None) -> str | None:
    """An absolute reference under this gateway's FHIR base ``own`` (``Bases.own``,
    however spelled: :func:`_under`) made relative (``Patient/<id>``, its query), as
    the Bundle's entries are resolved and the one-patient check looks a stored Patient
    up (``_content.py``); None for any other reference: relative, another server's
    (the partner's own base is never this gateway's), or no ``Type/...`` under it: a
    query or fragment right after the base (``…/fhir/#/Patient/X``) names no resource,
    and read as ours it was stored as ``#/Patient/X`` while checked as ``Patient/X``."""
    tail = _under(ref, own) if _SCHEME.match(ref) is not None else None
    # a Type, or a dot segment (refused as a spelling next, _refuse_spelling)
    if tail is None or _SCHEME.match(tail) is not None or not re.match(r"[A-Za-z.]", tail):
        return None
    return tail


def _under(ref: str, base: str | None) -> str | None:
    """What follows ``base`` in ``ref`` (``Type/id``, its query) when ``ref`` is under
    that FHIR base however the base is spelled: ``HTTPS://GW:443/fhir/`` is
    ``https://gw/fhir``. Never another scheme, host, port or path: ``http://`` is
    another server, ``https://gw/fhirx`` another base."""
    ours, theirs = _server(base) if base else None, _server(ref)
    if ours is None or theirs is None or ours[0] != theirs[0]:
        return None
    prefix = ours[1].rstrip("/") + "/"
    if not theirs[1].startswith(prefix):
        return None
    # a trailing slash of the base written into the reference ("…/fhir//Patient/1"); a
    # tail "//host/…" would name another server
    return theirs[1][len(prefix) :].lstrip("/")


def _resolve(
    conn: Connection,
    store: Resources,
    ref: str,
    urls: dict[str, str],
    index: dict[tuple[str, str, str], str | None],
    where: str,
    partner: str,
    known: dict[tuple[str, str], Stored | None] | None,
) -> str:
    """A reference as stored: an entry's fullUrl → Type/id; ``Type?identifier=...`` →
    the one resource of the partner's it finds (this Bundle's entries first); a literal
    ``Type/id`` only to a resource of the partner's, this gateway's or none stored;
    others unchanged."""
    if ref in urls:
        return urls[ref]
    if ref.startswith("urn:uuid:"):
        raise InboundError(
            "inbound.unresolved-reference",
            f"{where}: a urn:uuid reference that is no entry's fullUrl",
            expression=where,
        )
    literal = _LITERAL.fullmatch(ref)
    if literal is not None and _DOT_SEGMENT.search(ref) is not None:
        _refuse_spelling(where)
    if literal is not None:
        key = (literal[1], literal[2])
        target = known[key] if known is not None and key in known else store.current(conn, *key)
        if known is not None:
            known[key] = target  # read once: _check_linked reads it again
        if target is not None and target.partner not in (None, partner):
            raise InboundError(
                "inbound.unresolved-reference",
                f"{where}: a reference to a {literal[1]} another institution sent (a partner "
                "refers to its own resources and to this Bundle's)",
                expression=where,
            )
        return ref
    if ref.startswith("#") or _SCHEME.match(ref) is not None:
        return ref  # a contained resource; the partner's own server (``_in_bundle``)
    path, mark, query = ref.partition("?")
    if not mark or not TYPE_PATTERN.fullmatch(path):
        _refuse_spelling(where)
    if query.startswith("identifier=") and "&" not in query:
        system, value = parse_identifier(query.removeprefix("identifier="))
        own = index.get((path, system_key(system or ""), value))
        if own is not None:
            return f"{path}/{own}"
    try:
        found = store.find(conn, path, query, partner=partner)
    except InboundError as exc:  # a condition the gateway cannot match on: named here
        raise InboundError(exc.code, f"{where}: {exc.issue.message}", expression=where) from None
    if len(found) != 1:
        raise InboundError(
            "inbound.unresolved-reference",
            f"{where}: a conditional reference to {path} matches {len(found)} stored "
            "resources of this partner's (exactly one needed)",
            expression=where,
        )
    if path == "Patient" and _value_alone(query):
        # as a Patient entry's condition (_check_same_patient): the record would join
        # whichever of the partner's patients holds that number, in any system
        raise InboundError(
            IDENTITY_MISMATCH,
            f"{where}: a conditional reference by an identifier without a system matched "
            "a stored Patient: a value alone does not prove the patient (send the "
            "identifier's system); a record carries one patient's data; nothing is stored",
            expression=where,
        )
    return f"{path}/{found[0]}"


def _refuse_spelling(where: str) -> None:
    """A reference outside FHIR R4's grammar (references.html: a literal reference is
    ``[base]/Type/id`` or ``[base]/Type/id/_history/vid``; a transaction's conditional
    one ``Type?query``; ``#id`` a contained resource). Refused, not read as the
    ``Type/id`` it may mean: ``Patient/p/_history``, ``Patient/p/``, ``Patient/p?x``,
    ``Patient//p`` (or the same under this gateway's base) have no meaning servers
    agree on -- one local system follows it to ``Patient/p``, another to nothing --
    and, matching none of the forms checked here, they were kept as sent with no
    identity check, while the store took ``Patient/p/_history`` for ``Patient/p``: a
    record with another patient's MRN beside it joined the records kept under
    ``Patient/p``. Guessing which patient a malformed reference means is what a
    partner's sender must not leave to us."""
    raise InboundError(
        "inbound.unresolved-reference",
        f"{where}: not a reference FHIR R4 resolves: a literal reference is Type/id or "
        "Type/id/_history/version (relative, or under this gateway's base), a "
        "conditional one Type?query; nothing is stored",
        expression=where,
    )


def _response_entry(plan: _Entry, stored: Stored | None) -> dict[str, Any]:
    if stored is None:  # not reached: a write returns what it stored
        return {"response": {"status": "200 OK"}}
    status = 201 if plan.created else 200
    return {
        "response": {
            "status": f"{status} {_REASONS[status]}",
            "location": f"{stored.reference}/_history/{stored.version}",
            "etag": f'W/"{stored.version}"',
            "lastModified": instant(stored.last_updated),
        }
    }


def _response_bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}
