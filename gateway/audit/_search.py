"""Searching the audit log (``GET /fhir/AuditEvent`` on the API): FHIR search
parameters over the logged events, newest last (log order), keyset paging by index.

Parameters (each may repeat: all must hold; a comma inside one value: any of them):

    patient   the patient entity: Patient/<id>, <id>, or an identifier system|value
    consent   a Consent a policy decision rests on (or a consent event's): <id> or Consent/<id>
    entity    any entity's what: a reference (Bundle/<id>) or an identifier system|value
    agent     any agent's who: its identifier value (HKPMC, token-…) or system|value
    date      recorded, with a prefix eq (default), ge, gt, le, lt; a date or dateTime
    type      the event type: code or system|code (110106, rest)
    subtype   any subtype: code or system|code (disclose, search-type, delivery)
    outcome   0, 4, 8, 12
    action    C, R, U, D, E
    _id       the event's id
    _count    page size (1..500, default 50); _after: the cursor of the next page

``patient``, ``date``, ``_id`` and the gateway's kinds (``subtype`` in the gateway's
kind system) use the log's indexed columns; the rest filters the events read in index
order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa

from ..fhirdates import DateSearchError, date_range
from ._events import KIND_SYSTEM, OBJECT_ROLE, OUTCOME
from ._log import AuditError, AuditLog, Entry
from ._tables import entries

__all__ = ["PARAMETERS", "AuditQuery", "parse_query", "read_event", "search_events"]

PARAMETERS = (
    "patient", "consent", "entity", "agent", "date", "type", "subtype", "outcome", "action",
    "_id", "_count", "_after", "_format",
)  # fmt: skip
MAX_COUNT = 500
Event = dict[str, Any]


@dataclass
class AuditQuery:
    """A parsed search: SQL conditions on the indexed columns, then checks on each event."""

    where: list[Any] = field(default_factory=list)
    checks: list[Callable[[Event], bool]] = field(default_factory=list)
    count: int = 50
    after: int = -1


def _bad(name: str, why: str) -> AuditError:
    return AuditError("audit.bad-search", f"search parameter {name!r}: {why}", location=name)


def _token(value: str) -> tuple[str | None, str]:
    system, bar, code = value.partition("|")
    return (system or None, code) if bar else (None, value)


def _coded(codings: Iterable[Any], wanted: list[tuple[str | None, str]]) -> bool:
    for c in codings:
        if isinstance(c, dict) and any(
            c.get("code") == code and (system is None or c.get("system") == system)
            for system, code in wanted
        ):
            return True
    return False


def _names(ref: Any) -> set[str]:
    """What a reference answers to: its reference, and its identifier as value and
    system|value."""
    if not isinstance(ref, dict):
        return set()
    found = set()
    if ref.get("reference"):
        found.add(str(ref["reference"]))
    ident = ref.get("identifier") or {}
    if ident.get("value"):
        found |= {str(ident["value"]), f"{ident.get('system') or ''}|{ident['value']}"}
    return found


def _patient_key(value: str) -> str:
    return value if "|" in value or "/" in value else f"Patient/{value}"


def _patients(event: Event) -> set[str]:
    return {
        name
        for e in event.get("entity") or []
        if (e.get("role") or {}).get("system") == OBJECT_ROLE
        and (e.get("role") or {}).get("code") == "1"
        for name in _names(e.get("what"))
    }


def _date_clause(value: str) -> Any:
    try:
        prefix, start, end = date_range(value)
    except DateSearchError as exc:
        raise _bad("date", str(exc)) from None
    c = entries.c.recorded
    clauses = {
        "eq": sa.and_(c >= start, c < end),
        "ge": c >= start,
        "gt": c >= end,
        "le": c < end,
        "lt": c < start,
    }
    if prefix not in clauses:
        raise _bad("date", f"prefix {prefix!r} is not one of eq, ge, gt, le, lt")
    return clauses[prefix]


def _add(query: AuditQuery, name: str, value: str) -> None:
    values = [v for v in value.split(",") if v]
    if not values:
        raise _bad(name, "an empty value")
    if name == "patient":
        keys = [_patient_key(v) for v in values]
        # api-read and policy-decision events may name several patients; only the first
        # is in the column
        several = entries.c.kind.in_(("api-read", "policy-decision"))
        query.where.append(sa.or_(entries.c.patient.in_(keys), several))
        query.checks.append(lambda e: bool(_patients(e) & set(keys)))
    elif name == "consent":
        refs = {v if v.startswith("Consent/") else f"Consent/{v}" for v in values}
        query.where.append(entries.c.kind.in_(("policy-decision", "consent")))
        query.checks.append(
            lambda e: any(
                (x.get("what") or {}).get("reference") in refs for x in e.get("entity") or []
            )
        )
    elif name == "entity":
        wanted = set(values)
        query.checks.append(
            lambda e: any(_names(x.get("what")) & wanted for x in e.get("entity") or [])
        )
    elif name == "agent":
        wanted = set(values)
        query.checks.append(
            lambda e: any(_names(a.get("who")) & wanted for a in e.get("agent") or [])
        )
    elif name == "date":
        query.where.append(sa.or_(*(_date_clause(v) for v in values)))
    elif name == "type":
        tokens = [_token(v) for v in values]
        query.checks.append(lambda e: _coded([e.get("type")], tokens))
    elif name == "subtype":
        tokens = [_token(v) for v in values]
        if all(s == KIND_SYSTEM for s, _ in tokens):
            query.where.append(entries.c.kind.in_([c for _, c in tokens]))
        query.checks.append(lambda e: _coded(e.get("subtype") or [], tokens))
    elif name == "outcome":
        if not set(values) <= set(OUTCOME.values()):
            raise _bad("outcome", f"one of {', '.join(OUTCOME.values())}")
        query.checks.append(lambda e: e.get("outcome") in values)
    elif name == "action":
        if not set(values) <= set("CRUDE"):
            raise _bad("action", "one of C, R, U, D, E")
        query.checks.append(lambda e: e.get("action") in values)
    elif name == "_id":
        query.where.append(entries.c.event_id.in_(values))
    elif name in ("_count", "_after"):
        # ASCII digits only ('²'.isdigit() holds, int('²') fails); an index fits 64 bits
        if not (value.isascii() and value.isdigit()) or (name == "_after" and len(value) > 18):
            raise _bad(name, "a number")
        if name == "_count":
            query.count = max(1, min(int(value), MAX_COUNT))
        else:
            query.after = int(value)
    elif name == "_format":
        if value not in ("json", "application/fhir+json", "application/json"):
            raise _bad("_format", "the audit log is served as JSON only")
    else:
        raise _bad(name, f"unknown search parameter (the audit log is searched by "
                         f"{', '.join(PARAMETERS)})")  # fmt: skip


def parse_query(params: Iterable[tuple[str, str]]) -> AuditQuery:
    """The search of ``GET /fhir/AuditEvent``'s query parameters (AuditError
    ``audit.bad-search`` naming the parameter)."""
    query = AuditQuery()
    for name, value in params:
        _add(query, name, value)
    return query


def search_events(log: AuditLog, query: AuditQuery) -> tuple[list[tuple[Entry, Event]], int | None]:
    """One page of matching events in log order, and the cursor of the next (None: last
    page). Reads the log in chunks from the cursor, filtered by the indexed columns."""
    found: list[tuple[Entry, Event]] = []
    last = query.after
    chunk = max(4 * query.count, 200)
    while len(found) <= query.count:
        batch = list(_chunk(log, query, last, chunk))
        for row in batch:
            event: Event = orjson.loads(row.canonical)
            if all(check(event) for check in query.checks):
                found.append((row, event))
                if len(found) > query.count:
                    break
        if len(batch) < chunk:
            break
        last = batch[-1].index
    if len(found) > query.count:
        return found[: query.count], found[query.count - 1][0].index
    return found, None


def _chunk(log: AuditLog, query: AuditQuery, after: int, limit: int) -> Iterable[Entry]:
    log.flush()  # the events deferred on this store are part of the log
    select = sa.select(entries).where(entries.c.idx > after, *query.where)
    with log.engine.connect() as conn:
        rows = conn.execute(select.order_by(entries.c.idx).limit(limit)).all()
    return [
        Entry(
            r.idx,
            r.event_id,
            r.recorded,
            r.kind,
            r.patient,
            r.partner,
            bytes(r.canonical),
            bytes(r.leaf_hash),
            bytes(r.root),
        )
        for r in rows
    ]


def read_event(log: AuditLog, event_id: str) -> tuple[Entry, Event]:
    """One logged event by its id, exactly as logged (AuditError ``audit.not-found``)."""
    query = AuditQuery(where=[entries.c.event_id == event_id[:64]], count=1)
    page, _ = search_events(log, query)
    if not page:
        raise AuditError("audit.not-found", "no AuditEvent with this id in the audit log")
    return page[0]
