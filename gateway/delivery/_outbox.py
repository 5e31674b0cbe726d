"""The outbox: one row per (record, partner) in the message store, with the ordered
parts of its Bundle, its state, and every transition (``outbox_events``).

States (docs/delivery.md has the diagram):

- ``pending``: queued, not sent yet;  ``sending``: a worker holds it (``lease_until``);
- ``retrying``: nothing was applied, send again at ``next_at``;
- ``waiting``: a send was ambiguous (or interrupted): ask the partner at ``next_at``;
- ``held``: not sent until a person (or a later stage) releases it;
- ``delivered`` and ``dead``: final (dead keeps the partner's OperationOutcome).

Order: a row is due only when no earlier row with the same (partner, order key) is
undelivered, so a patient's later record never overtakes an earlier one, while other
patients' records go on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import GatewayError
from ..partners import Partner
from ..store import Store, metadata, utcnow

__all__ = [
    "ACTIVE",
    "DUE",
    "STATES",
    "DeliveryError",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "order_key_of",
]

STATES = ("pending", "waiting", "sending", "delivered", "retrying", "held", "dead")
DUE = ("pending", "retrying", "waiting")  # a worker picks these up at next_at
ACTIVE = ("pending", "waiting", "sending", "retrying", "held")  # not final yet

_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]


class DeliveryError(GatewayError):
    """A delivery request the gateway cannot act on (no such outbox record...)."""

    family = "delivery"


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    id: int
    message_id: int | None
    partner: str
    label: str | None
    order_key: str | None
    part: int  # the next part to send; parts before it are delivered
    part_count: int
    state: str
    attempts: int
    next_at: datetime
    created_at: datetime
    updated_at: datetime
    last_status: int | None
    last_error: str | None
    last_response: str | None

    def to_json(self, *, with_order_key: bool = False) -> dict[str, Any]:
        out = {
            "id": self.id,
            "message_id": self.message_id,
            "partner": self.partner,
            "label": self.label,
            "state": self.state,
            "part": self.part,
            "part_count": self.part_count,
            "attempts": self.attempts,
            "next_at": _iso(self.next_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "last_status": self.last_status,
            "last_error": self.last_error,
        }
        if with_order_key:  # the patient identifier: shown on request only
            out["order_key"] = self.order_key
        return out


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    at: datetime
    from_state: str | None
    to_state: str
    part: int | None
    status: int | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "part": self.part,
            "status": self.status,
            "reason": self.reason,
        }


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


def order_key_of(bundle: dict[str, Any]) -> str | None:
    """The patient a Bundle is about, as ``system|value`` of its Patient's first full
    identifier: records with the same key reach a partner in the order queued."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Patient":
            continue
        for ident in resource.get("identifier") or []:
            if ident.get("system") and ident.get("value"):
                return f"{ident['system']}|{ident['value']}"
    return None


class Outbox:
    """The outbox tables of a store."""

    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.clock = clock  # naive UTC; the worker shares it (tests move it)
        self._writer = store.engine.execution_options(write=True)  # SQLite: BEGIN IMMEDIATE

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    # -- queueing -------------------------------------------------------------------
    def enqueue(
        self,
        partner: Partner,
        bundle: dict[str, Any],
        *,
        message_id: int | None = None,
        label: str | None = None,
        order_key: str | None = None,
        now: datetime | None = None,
    ) -> tuple[int, bool]:
        """Queue ``bundle`` for ``partner`` as the parts its split makes; (row id, new).
        The same Bundle queued again for the same partner is the existing row. Without
        ``order_key`` the Bundle's patient is the key (:func:`order_key_of`)."""
        now = now or self.clock()
        raw = orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)
        dedup = hashlib.sha256(partner.key.encode() + b"|" + raw).hexdigest()
        parts = partner.split(bundle)
        if label is None:
            ident = bundle.get("identifier") or {}
            label = str(ident["value"])[:255] if ident.get("value") else None
        with self._write() as conn:
            found = conn.execute(
                sa.select(_outbox.c.id).where(_outbox.c.dedup_key == dedup)
            ).scalar()
            if found is not None:
                return int(found), False
            row_id = conn.execute(
                _outbox.insert()
                .values(
                    message_id=message_id,
                    partner=partner.key,
                    label=label,
                    order_key=order_key or order_key_of(bundle),
                    dedup_key=dedup,
                    parts=orjson.dumps(parts),
                    part_count=len(parts),
                    part=0,
                    state="pending",
                    attempts=0,
                    next_at=now,
                    created_at=now,
                    updated_at=now,
                )
                .returning(_outbox.c.id)
            ).scalar_one()
            self._event(conn, int(row_id), now, None, "pending", 0, None, "queued")
        return int(row_id), True

    # -- reading --------------------------------------------------------------------
    def get(self, row_id: int) -> OutboxRecord | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(_select().where(_outbox.c.id == row_id)).first()
        return _record(row) if row is not None else None

    def require(self, row_id: int) -> OutboxRecord:
        record = self.get(row_id)
        if record is None:
            raise DeliveryError("delivery.not-found", f"no outbox record {row_id}")
        return record

    def parts(self, row_id: int) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            raw = conn.execute(sa.select(_outbox.c.parts).where(_outbox.c.id == row_id)).scalar()
        parts: list[dict[str, Any]] = orjson.loads(raw) if raw is not None else []
        return parts

    def events(self, row_id: int) -> list[OutboxEvent]:
        e = _events.c
        query = sa.select(e.at, e.from_state, e.to_state, e.part, e.status, e.reason)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.where(e.outbox_id == row_id).order_by(e.id)).all()
        return [OutboxEvent(*row) for row in rows]

    def records(
        self, state: str | None = None, partner: str | None = None, limit: int = 100
    ) -> list[OutboxRecord]:
        """Newest first."""
        query = _select().order_by(_outbox.c.id.desc()).limit(limit)
        if state:
            query = query.where(_outbox.c.state == state)
        if partner:
            query = query.where(_outbox.c.partner == partner)
        with self.store.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def due(
        self, now: datetime, limit: int = 100, exclude: Sequence[str] = ()
    ) -> list[OutboxRecord]:
        """Rows to act on now, oldest first: due, not held by a worker, first of their
        (partner, order key) among the undelivered, and not for a partner in
        ``exclude`` (its breaker is open)."""
        o = _outbox
        earlier = o.alias("earlier")
        blocked = (
            sa.select(earlier.c.id)
            .where(
                earlier.c.partner == o.c.partner,
                earlier.c.order_key == o.c.order_key,  # NULL = NULL is not true: no order
                earlier.c.id < o.c.id,
                earlier.c.state != "delivered",
            )
            .exists()
        )
        query = (
            _select()
            .where(
                o.c.state.in_(DUE),
                o.c.next_at <= now,
                sa.or_(o.c.lease_until.is_(None), o.c.lease_until <= now),
                ~blocked,
                o.c.partner.not_in(exclude) if exclude else sa.true(),
            )
            .order_by(o.c.id)
            .limit(limit)
        )
        with self.store.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def stats(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Per partner: records by state, queue depth (not final) and the oldest record
        not delivered yet (its age in seconds)."""
        now = now or self.clock()
        o = _outbox.c
        query = sa.select(o.partner, o.state, sa.func.count(), sa.func.min(o.created_at))
        with self.store.engine.connect() as conn:
            rows = conn.execute(query.group_by(o.partner, o.state)).all()
        out: dict[str, dict[str, Any]] = {}
        for partner, state, count, oldest in rows:
            entry = out.setdefault(
                partner, {"partner": partner, "states": {}, "depth": 0, "oldest_waiting": None}
            )
            entry["states"][state] = int(count)
            if state in ACTIVE:
                entry["depth"] += int(count)
                if entry["oldest_waiting"] is None or oldest < entry["oldest_waiting"]:
                    entry["oldest_waiting"] = oldest
        for entry in out.values():
            oldest = entry.pop("oldest_waiting")
            entry["oldest_waiting_at"] = _iso(oldest) if oldest else None
            entry["oldest_waiting_seconds"] = (
                round((now - oldest).total_seconds(), 3) if oldest else None
            )
        return [out[k] for k in sorted(out)]

    # -- moving ---------------------------------------------------------------------
    def claim(self, record: OutboxRecord, now: datetime, lease: timedelta) -> bool:
        """Hold ``record`` for this worker until ``now + lease``; False when another
        worker holds it or it moved meanwhile."""
        o = _outbox.c
        with self._write() as conn:
            done = conn.execute(
                _outbox.update()
                .where(
                    o.id == record.id,
                    o.state == record.state,
                    o.part == record.part,
                    sa.or_(o.lease_until.is_(None), o.lease_until <= now),
                )
                .values(lease_until=now + lease)
            )
            return bool(done.rowcount == 1)

    def move(
        self,
        row_id: int,
        from_state: str,
        to_state: str,
        reason: str,
        *,
        now: datetime,
        lease: timedelta | None = None,
        status: int | None = None,
        **values: Any,
    ) -> None:
        """One transition, with its event, in one transaction. ``lease``: keep holding
        the row (sending); otherwise the row is let go. ``values``: columns to set."""
        o = _outbox.c
        values["lease_until"] = now + lease if lease is not None else None
        with self._write() as conn:
            done = conn.execute(
                _outbox.update()
                .where(o.id == row_id, o.state == from_state)
                .values(state=to_state, updated_at=now, **values)
                .returning(o.part)
            ).first()
            if done is None:
                raise DeliveryError(
                    "delivery.conflict",
                    f"outbox record {row_id} is no longer {from_state} (another worker?)",
                )
            self._event(conn, row_id, now, from_state, to_state, int(done[0]), status, reason)

    def recover(self, now: datetime) -> int:
        """Rows left ``sending`` by a worker that stopped (its lease ran out): the
        request may have been applied, so they wait for the partner to be asked."""
        o = _outbox.c
        code = "delivery.interrupted"
        with self._write() as conn:
            ids = conn.execute(
                sa.select(o.id, o.part).where(o.state == "sending", o.lease_until <= now)
            ).all()
            for row_id, part in ids:
                conn.execute(
                    _outbox.update()
                    .where(o.id == row_id, o.state == "sending")
                    .values(
                        state="waiting",
                        next_at=now,
                        lease_until=None,
                        updated_at=now,
                        last_error=code,
                    )
                )
                reason = f"{code}: the worker stopped while sending; ask first"
                self._event(conn, row_id, now, "sending", "waiting", part, None, reason)
        return len(ids)

    @staticmethod
    def _event(
        conn: Connection,
        row_id: int,
        at: datetime,
        from_state: str | None,
        to_state: str,
        part: int | None,
        status: int | None,
        reason: str,
    ) -> None:
        conn.execute(
            _events.insert().values(
                outbox_id=row_id,
                at=at,
                from_state=from_state,
                to_state=to_state,
                part=part,
                status=status,
                reason=reason,
            )
        )


def _select() -> sa.Select[Any]:
    o = _outbox.c
    return sa.select(
        o.id,
        o.message_id,
        o.partner,
        o.label,
        o.order_key,
        o.part,
        o.part_count,
        o.state,
        o.attempts,
        o.next_at,
        o.created_at,
        o.updated_at,
        o.last_status,
        o.last_error,
        o.last_response,
    )


def _record(row: Any) -> OutboxRecord:
    return OutboxRecord(*row)
