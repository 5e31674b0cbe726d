"""The resources partners sent, as a small FHIR store over the message store's database:
read, search (identifier, patient, status, _lastUpdated) and versioned writes. Writes
take the caller's connection, so that a whole transaction Bundle commits or not at all.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import shape
from ..fhirdates import DateSearchError, date_range
from ..fhirsystems import beside_rows, digest, system_key
from ..store import MAX_ID, Store, stamp_after, utcnow
from ._errors import InboundError
from ._schema import beside, identifiers, resources

__all__ = [
    "ID_PATTERN",
    "TYPE_PATTERN",
    "Resources",
    "Search",
    "Stored",
    "instant",
    "parameter_name",
    "parse_identifier",
    "parse_last_updated",
    "patient_of",
]

TYPE_PATTERN = re.compile(r"[A-Z][A-Za-z]{1,63}")
ID_PATTERN = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Elements that name the patient a resource is about, in the order FHIR resources use them.
_PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")
_PARAMETER = re.compile(r"[A-Za-z_][A-Za-z_:.\-]{0,39}")


def parameter_name(name: str) -> str:
    """A search parameter's name as an error may quote it: as given when it looks like
    one (letters, no digits), else by its form (``'9999999'``: a value sent as a name)."""
    return repr(name) if _PARAMETER.fullmatch(name) else shape(name)


def instant(moment: datetime) -> str:
    """A naive UTC store time as a FHIR instant."""
    return moment.isoformat(timespec="milliseconds") + "Z"


@dataclass(frozen=True, slots=True)
class Stored:
    row: int
    resource_type: str
    logical_id: str
    version: int
    partner: str | None
    patient: str | None
    status: str | None
    last_updated: datetime
    resource: dict[str, Any] = field(compare=False)

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.logical_id}"


def parse_identifier(token: str) -> tuple[str | None, str]:
    """A token search value: ``system|value``, ``|value`` (no system) or ``value`` (any
    system: system None). An empty system is returned as ''."""
    if "|" in token:
        system, value = token.split("|", 1)
        return system, value
    return None, token


def parse_last_updated(value: str) -> tuple[str, datetime, datetime]:
    """``_lastUpdated=[prefix]date[time]`` → (prefix, start, end) of the instant range the
    value's precision names, naive UTC (gateway/fhirdates.py)."""
    try:
        return date_range(value)
    except DateSearchError as exc:
        raise InboundError(
            "inbound.bad-search", f"_lastUpdated: {exc}", location="_lastUpdated"
        ) from None


def patient_of(resource: dict[str, Any]) -> str | None:
    """Who a resource is about: ``Patient/<id>`` for a literal reference to a patient,
    ``system|value`` for a logical one; None for a Patient itself or none named."""
    if resource.get("resourceType") == "Patient":
        return None
    for name in _PATIENT_ELEMENTS:
        ref = resource.get(name)
        if not isinstance(ref, dict):
            continue
        literal = ref.get("reference")
        if isinstance(literal, str) and literal.startswith("Patient/"):
            return literal.split("/_history", 1)[0][:512]
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            return f"{ident.get('system') or ''}|{ident['value']}"[:512]
    return None


@dataclass
class Search:
    """What ``GET /fhir/{type}?...`` asks; every parameter ANDed."""

    identifier: str | None = None
    patient: str | None = None
    status: list[str] = field(default_factory=list)
    last_updated: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    partner: str | None = None  # only what this partner sent (partner credentials)
    made_here: bool = False  # only what this gateway made (its referral Tasks)


class Resources:
    """The stored resources of one store (thread-safe, like the store)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    # -- reading ----------------------------------------------------------------------
    def read(self, resource_type: str, logical_id: str) -> Stored | None:
        with self.engine.connect() as conn:
            return self.current(conn, resource_type, logical_id)

    def current(self, conn: Connection, resource_type: str, logical_id: str) -> Stored | None:
        row = conn.execute(
            _select().where(
                resources.c.resource_type == resource_type,
                resources.c.logical_id == logical_id,
                resources.c.current.is_(True),
            )
        ).first()
        return _stored(row) if row is not None else None

    def search(
        self, resource_type: str, where: Search, limit: int = 50, after: int = 0
    ) -> tuple[list[Stored], int | None]:
        """One page in row order (oldest change first) and the cursor of the next page."""
        after = min(after, MAX_ID)  # a cursor past every row (a database integer)
        with self.engine.connect() as conn:
            query = self._filtered(conn, resource_type, where)
            rows = conn.execute(
                query.where(resources.c.id > after).order_by(resources.c.id).limit(limit + 1)
            ).all()
        found = [_stored(r) for r in rows[:limit]]
        return found, (found[-1].row if len(rows) > limit else None)

    def _filtered(self, conn: Connection, resource_type: str, where: Search) -> sa.Select[Any]:
        c = resources.c
        query = _select().where(c.resource_type == resource_type, c.current.is_(True))
        if where.partner is not None:
            query = query.where(c.partner == where.partner)
        if where.made_here:
            query = query.where(c.partner.is_(None))
        if where.ids:
            query = query.where(c.logical_id.in_(where.ids))
        if where.identifier is not None:
            query = query.where(c.id.in_(_rows_with(resource_type, where.identifier)))
        if where.patient is not None:
            query = query.where(c.patient.in_(self._patient_keys(conn, where.patient)))
        if where.status:
            query = query.where(c.status.in_(where.status))
        for prefix, start, end in where.last_updated:
            query = query.where(_moment(prefix, start, end))
        return query

    def _patient_keys(self, conn: Connection, patient: str) -> list[str]:
        """``patient=`` as the ``patient`` column holds it: ``Patient/id`` or ``id`` as is;
        ``system|value`` also as every stored Patient with that identifier, its system
        however spelled (``gateway/fhirsystems.py``: as written, ``patient=…/sid/mrn/|0098765``
        found none of the records kept under 许嘉玮's Patient, and a conditional create
        by it stored them twice). A logical reference (the column holds its
        ``system|value`` as written) is matched as written."""
        if "|" not in patient:
            return [patient if patient.startswith("Patient/") else f"Patient/{patient}"]
        system, value = parse_identifier(patient)
        i, r = identifiers.c, resources.c
        rows = conn.execute(
            sa.select(r.logical_id, i.system)
            .join_from(identifiers, resources, r.id == i.resource_row)
            .where(i.resource_type == "Patient", i.value == value, r.current.is_(True))
            .order_by(r.id)
        ).all()
        wanted = system_key(system or "")
        ids = dict.fromkeys(
            row.logical_id for row in rows if system_key(row.system or "") == wanted
        )
        return [patient, *(f"Patient/{i}" for i in ids)]

    def find(
        self, conn: Connection, resource_type: str, query: str, *,
        partner: str | None = None, made_here: bool = False,
    ) -> list[str]:  # fmt: skip
        """The logical ids a conditional create's or update's query matches
        (``identifier=system|value``, ``_id=``; several parameters ANDed): among what
        ``partner`` sent, or what was made here, or (neither given) all."""
        where = Search(partner=partner, made_here=made_here)
        pairs = parse_qsl(query, keep_blank_values=True)
        if not pairs:
            raise InboundError(
                "inbound.bad-condition",
                f"a conditional {resource_type} request without search parameters",
                location="Bundle.entry.request",
            )
        for name, value in pairs:
            if name == "identifier" and where.identifier is None:
                where.identifier = value
            elif name == "_id":
                where.ids.append(value)
            elif name == "patient" and where.patient is None:
                where.patient = value
            elif name == "status":
                where.status += value.split(",")
            else:
                raise InboundError(
                    "inbound.bad-condition",
                    f"a conditional {resource_type} request by {parameter_name(name)}: the "
                    "gateway matches on identifier, _id, patient and status",
                    location="Bundle.entry.request",
                )
        system, value = parse_identifier(where.identifier or "")
        if not system:  # none named (``value``: any; ``|value``: none): as written
            rows = conn.execute(
                self._filtered(conn, resource_type, where).with_only_columns(resources.c.logical_id)
            ).scalars()
            return list(rows)
        return self._found_by_system(conn, resource_type, where, system, value)

    def _found_by_system(
        self, conn: Connection, resource_type: str, where: Search, system: str, value: str
    ) -> list[str]:
        """``find`` by ``system|value``, the system however it is spelled
        (``gateway/fhirsystems.py``): matched as written, NSCH's ``…/sid/mrn/|0098765`` found no
        Patient stored under ``…/sid/mrn`` and created a second one with 许嘉玮's MRN.
        The same one statement, by value; the systems compared here (what is stored
        keeps the system as written: no schema change)."""
        i, r = identifiers.c, resources.c
        query = (
            self._filtered(conn, resource_type, replace(where, identifier=None))
            .with_only_columns(r.id, r.logical_id, i.system)
            .join_from(resources, identifiers, i.resource_row == r.id)
            .where(i.resource_type == resource_type, i.value == value)
            .order_by(r.id)
        )
        wanted, seen = system_key(system), dict[int, str]()
        for row in conn.execute(query):
            if system_key(row.system or "") == wanted:
                seen.setdefault(int(row.id), str(row.logical_id))  # one per stored row
        return list(seen.values())

    def find_identifiers(
        self, conn: Connection, wanted: list[tuple[str, str]], partner: str | None = None
    ) -> dict[tuple[str, str], list[str]]:
        """``find`` for many ``(type, query)`` at once, in one statement: those whose query
        is one ``identifier=`` parameter (what conditional creates and updates carry);
        the others are left out (the caller asks ``find``). Same matches as ``find``
        (``partner``: among what it sent; systems however spelled)."""
        tokens: dict[tuple[str, str], tuple[str | None, str]] = {}
        for resource_type, query in wanted:
            pairs = parse_qsl(query, keep_blank_values=True)
            if len(pairs) == 1 and pairs[0][0] == "identifier":
                tokens[(resource_type, query)] = parse_identifier(pairs[0][1])
        if not tokens:
            return {}
        i, r = identifiers.c, resources.c
        matching = (
            sa.select(i.resource_type, i.system, i.value, r.id, r.logical_id)
            .join(resources, r.id == i.resource_row)
            .where(
                i.resource_type.in_(sorted({t for t, _ in tokens})),
                i.value.in_(sorted({v for _, v in tokens.values()})),
                r.current.is_(True),
            )
            .order_by(r.id)
        )
        if partner is not None:
            matching = matching.where(r.partner == partner)
        rows = conn.execute(matching).all()
        found: dict[tuple[str, str], list[str]] = {}
        for key, (system, value) in tokens.items():
            as_compared = None if system is None else system_key(system)
            seen: dict[int, str] = {}  # one id per stored row, as find's IN (subquery) gives
            for row in rows:
                if (
                    row.resource_type == key[0]
                    and row.value == value
                    and (as_compared is None or system_key(row.system or "") == as_compared)
                ):
                    seen.setdefault(int(row.id), str(row.logical_id))
            found[key] = list(seen.values())
        return found

    def current_many(
        self, conn: Connection, keys: set[tuple[str, str]]
    ) -> dict[tuple[str, str], Stored]:
        """The current versions of several ``(type, logical id)`` in one statement (those
        not stored are absent)."""
        if not keys:
            return {}
        c = resources.c
        rows = conn.execute(
            _select().where(
                c.resource_type.in_(sorted({t for t, _ in keys})),
                c.logical_id.in_(sorted({i for _, i in keys})),
                c.current.is_(True),
            )
        ).all()
        out = {(row.resource_type, row.logical_id): row for row in rows}
        return {k: _stored(row) for k, row in out.items() if k in keys}

    def claims_against(
        self, conn: Connection, patient: str, key: tuple[str, str], record: tuple[str, str]
    ) -> list[tuple[tuple[str, str], frozenset[str]]]:
        """The identifiers (as compared, with their type codes) written beside a
        reference to ``patient`` (``Patient/<id>``) in the current records partners
        sent, other than ``record`` (type, id), of the system of ``key`` and another
        value: those that may name another patient than ``key`` does (``_apply.py``
        decides). One indexed look-up of the few rows that differ (``inbound_beside``),
        not every record kept under that id."""
        b, r = beside.c, resources.c
        system, value = key
        same = digest(value)
        rows = conn.execute(
            sa.select(b.system, b.value, b.types)
            .join(resources, r.id == b.resource_row)
            .where(
                b.patient == patient,
                b.system_hash == digest(system),
                # another value, as two ranges of the index (``<>`` is read row by row)
                sa.or_(b.value_hash < same, b.value_hash > same),
                r.current.is_(True),
                r.partner.is_not(None),  # a Task made here repeats its referral's subject
                sa.not_(sa.and_(r.resource_type == record[0], r.logical_id == record[1])),
            )
        ).all()
        return [
            ((row.system, row.value), frozenset(orjson.loads(row.types)))
            for row in rows
            if row.system == system and row.value != value  # the hashes, confirmed
        ]

    def kept_beside(self, conn: Connection, patient: str) -> set[tuple[str, str]]:
        """The identifiers (as compared) written beside a reference to ``patient``
        (``Patient/<id>``) in the current records kept under it, whoever sent them:
        what a Patient stored under that id must agree with (``_apply.py``). Read from
        ``inbound_beside``: no record is read."""
        b, r = beside.c, resources.c
        rows = conn.execute(
            sa.select(b.system, b.value)
            .distinct()
            .join(resources, r.id == b.resource_row)
            .where(b.patient == patient, r.current.is_(True))
        ).all()
        return {(row.system, row.value) for row in rows}

    def kept_by_others(self, conn: Connection, patient: str, partner: str) -> bool:
        """Whether a current resource about ``patient`` (``Patient/<id>``) was sent by
        another partner than ``partner`` (one row at most, no resource read)."""
        c = resources.c
        row = conn.execute(
            sa.select(c.id)
            .where(
                c.patient == patient,
                c.current.is_(True),
                c.partner.is_not(None),
                c.partner != partner,
            )
            .limit(1)
        ).first()
        return row is not None

    def versions(self, resource_type: str, logical_id: str) -> list[Stored]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                _select()
                .where(
                    resources.c.resource_type == resource_type,
                    resources.c.logical_id == logical_id,
                )
                .order_by(resources.c.version)
            ).all()
        return [_stored(r) for r in rows]

    # -- writing (in the caller's transaction) ----------------------------------------
    def write(
        self,
        conn: Connection,
        resource: dict[str, Any],
        *,
        logical_id: str | None = None,
        partner: str | None,
        bundle_id: int | None = None,
        now: datetime | None = None,
        known: dict[tuple[str, str], Stored | None] | None = None,
    ) -> tuple[Stored, bool]:
        """Store ``resource`` as the next version of ``logical_id`` (a new resource when
        None or not stored yet); (stored, written). The same content as the current
        version writes nothing (written False): a resend stores nothing twice.
        ``known``: current versions already read in this transaction (None: not stored),
        by (type, id); kept up to date with what this writes."""
        now = now or utcnow()
        resource_type = str(resource["resourceType"])
        logical_id = logical_id or str(uuid.uuid4())
        key = (resource_type, logical_id)
        if known is not None and key in known:
            found = known[key]
        else:
            found = self.current(conn, resource_type, logical_id)
        if found is not None and _content(found.resource) == _content(resource):
            return found, False
        version = found.version + 1 if found is not None else 1
        if found is not None:
            now = stamp_after(now, found.last_updated)
        body = {**resource, "id": logical_id}
        meta = dict(body.get("meta") or {})
        meta.update(versionId=str(version), lastUpdated=instant(now))
        body["meta"] = meta
        if found is not None:
            conn.execute(
                resources.update().where(resources.c.id == found.row).values(current=False)
            )
        status = body.get("status")
        patient = patient_of(body)
        state = str(status)[:32] if isinstance(status, str) else None
        values: dict[str, Any] = {
            "resource_type": resource_type,
            "logical_id": logical_id,
            "version": version,
            "current": True,
            "partner": partner,
            "bundle_id": bundle_id,
            "patient": patient,
            "status": state,
            "last_updated": now,
            "resource": orjson.dumps(body),
        }
        row = conn.execute(
            resources.insert().values(**values).returning(resources.c.id)
        ).scalar_one()
        idents = [
            {
                "resource_row": row,
                "n": n,
                "resource_type": resource_type,
                "system": str(i.get("system") or "")[:512],
                "value": str(i["value"])[:512],
            }
            for n, i in enumerate(body.get("identifier") or [])
            if isinstance(i, dict) and i.get("value")
        ]
        if idents:
            conn.execute(identifiers.insert(), idents)
        # in the same transaction: what the identity checks read instead of the records
        kept = beside_rows(int(row), body)
        if kept:
            conn.execute(beside.insert(), kept)
        stored = Stored(
            int(row),
            resource_type,
            logical_id,
            version,
            partner,
            patient,
            state,
            now,
            body,
        )
        if known is not None:
            known[key] = stored
        return stored, True


def _content(resource: dict[str, Any]) -> bytes:
    """A resource without what the server sets (id, meta.versionId, meta.lastUpdated)."""
    body = {k: v for k, v in resource.items() if k != "id"}
    meta = {
        k: v for k, v in (body.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    if meta:
        body["meta"] = meta
    else:
        body.pop("meta", None)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def _rows_with(resource_type: str, token: str) -> sa.Select[Any]:
    system, value = parse_identifier(token)
    query = sa.select(identifiers.c.resource_row).where(
        identifiers.c.resource_type == resource_type, identifiers.c.value == value
    )
    if system is not None:
        query = query.where(identifiers.c.system == system)
    return query


def _moment(prefix: str, start: datetime, end: datetime) -> Any:
    at = resources.c.last_updated
    return {
        "eq": sa.and_(at >= start, at < end),
        "ge": at >= start,
        "gt": at >= end,
        "le": at < end,
        "lt": at < start,
    }[prefix]


def _select() -> sa.Select[Any]:
    c = resources.c
    return sa.select(
        c.id,
        c.resource_type,
        c.logical_id,
        c.version,
        c.partner,
        c.patient,
        c.status,
        c.last_updated,
        c.resource,
    )


def _stored(row: Any) -> Stored:
    return Stored(
        int(row.id),
        row.resource_type,
        row.logical_id,
        int(row.version),
        row.partner,
        row.patient,
        row.status,
        row.last_updated,
        orjson.loads(row.resource),
    )


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-like dict (one with a ``reference`` string) inside ``node``."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)
