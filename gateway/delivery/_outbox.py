"""The outbox: one row per (record, partner) in the message store, with the ordered
parts of its Bundle, its state, and every transition (``outbox_events``).

States (docs/delivery.md has the diagram):

- ``pending``: queued, not sent yet;  ``sending``: a worker holds it (``lease_until``);
- ``retrying``: nothing was applied, send again at ``next_at``;
- ``waiting``: a send was ambiguous (or interrupted): ask the partner at ``next_at``;
- ``held``: not sent until a person (or a later stage) releases it;
- ``delivered`` and ``dead``: final (dead keeps the partner's OperationOutcome);
- ``discarded``: final, a person gave up on a held or dead row (:meth:`Outbox.discard`):
  never sent again, and its patient's later rows no longer wait for it.

Order: a row is due only when no earlier row with the same (partner, order key) is
undelivered, so a patient's later record never overtakes an earlier one, while other
patients' records go on.

Workers (threads, processes, machines on one PostgreSQL) take due rows with
:meth:`Outbox.claim_due`: a batch leased in one transaction (``FOR UPDATE SKIP LOCKED``
on PostgreSQL, the lease's compare-and-set on SQLite), each row begun with
:meth:`Outbox.renew` (fenced by the claim's lease), the rest let go with
:meth:`Outbox.unclaim`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import GatewayError
from ..partners import Partner
from ..store import Store, conflict_insert, metadata, utcnow
from ._links import Link, Provided, link_ref, links_of, patients_by_link
from ._overwrite import OVERWRITE, written_links

__all__ = [
    "ACTIVE",
    "DISCARDABLE",
    "DUE",
    "HELD_UNSENT_FROM",
    "NEVER_SENT_HOLD",
    "STATES",
    "Decide",
    "DeliveryError",
    "Outbox",
    "OutboxEvent",
    "OutboxRecord",
    "Returned",
    "label_of",
    "last_hold_from",
    "order_key_of",
]

STATES = (
    "pending",
    "waiting",
    "sending",
    "delivered",
    "retrying",
    "held",
    "dead",
    "discarded",
)
DUE = ("pending", "retrying", "waiting")  # a worker picks these up at next_at
ACTIVE = ("pending", "waiting", "sending", "retrying", "held")  # not final yet
DISCARDABLE = ("held", "dead")  # what a person may give up on (gateway outbox discard)
# Rows that keep no later row of their patient back: sent, or given up by a person.
_DONE = ("delivered", "discarded")
# The worker's hold of a row whose partner is not (or no longer) configured.
UNKNOWN_PARTNER = "delivery.unknown-partner"
# ... and of such a row, its partner configured again, whose return was refused for a
# reason not the policy's (the audit log unavailable, its record gone or not rebuilt):
# held for that, named in its event, until a person releases it (decided again).
RETURN_REFUSED = "delivery.return-refused"
# Moves from or to these change what the message's state is (held, dead, delivered).
_SETTLED = frozenset({"held", "dead", "delivered", "discarded"})
# Where a hold of a never-sent row (part 0) may come from: made held (None), queued
# (the overwrite guard, another patient's link, a partner gone), or a send of its first
# part the partner refused (our credentials, no token): nothing of it was applied.
# Not ``waiting``: its last send was ambiguous, the partner may hold it.
HELD_UNSENT_FROM = (None, "pending", "retrying", "sending")

_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]
log = logging.getLogger("gateway.delivery")
_links = metadata.tables["outbox_links"]
_messages = metadata.tables["messages"]
_pauses = metadata.tables["partner_pauses"]
# A message's state from its outbox rows: the first of these any row is in decides
# (held and dead wait for a person, queued for the worker; delivered only when all are).
_MESSAGE_STATE = (
    ("held", ("held",)),
    ("dead", ("dead",)),
    ("queued", ("pending", "waiting", "sending", "retrying")),
    # A row a person gave up on (gateway outbox discard) was not delivered, but nobody
    # has anything left to do about it: the message is discarded (not dead, which
    # waits for a person), once no other row waits; never delivered while one is.
    ("discarded", ("discarded",)),
    ("delivered", ("delivered",)),
)


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
    record: int | None = None  # the record's position in its message (0-based)
    purpose: str | None = None  # the policy purpose it was decided for
    replay_of: int | None = None  # the row this one replays
    links_until: datetime | None = None  # waits for the records it links to until then

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
            "record": self.record,
            "purpose": self.purpose,
            "replay_of": self.replay_of,
            "links_until": _iso(self.links_until) if self.links_until else None,
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
    # The policy decision it was made on (queued, held, released, sent again on); None
    # for other moves, and for events older than migration v0014_event_decisions, whose
    # reason alone names it.
    decision_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at),
            "from": self.from_state,
            "to": self.to_state,
            "part": self.part,
            "status": self.status,
            "reason": self.reason,
            "decision": self.decision_id,
        }


# The worker's return of a row held for its partner, decided again first
# (``Outbound.return_known``): raises a GatewayError when refused (held for the policy).
Decide = Callable[[OutboxRecord, str], object]
# A row the worker looked at on its partner's return: the row as it is now, and the
# error that refused its return (None: it moved).
Returned = tuple[OutboxRecord, GatewayError | None]


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="milliseconds") + "Z"


def label_of(bundle: dict[str, Any]) -> str | None:
    """What a record is, for people: its Bundle's identifier value (a control id,
    document id or Study UID; never patient data)."""
    ident = bundle.get("identifier") or {}
    return str(ident["value"])[:255] if isinstance(ident, dict) and ident.get("value") else None


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

    @contextmanager
    def _within(self, conn: Connection | None) -> Iterator[Connection]:
        """A write transaction of its own, or (``conn``) a SAVEPOINT in the caller's
        transaction, whose commit is the caller's (the policy decision the row follows:
        gateway/delivery/_outbound.py): a lost dedup race undoes the insert only."""
        if conn is None:
            with self._write() as own:
                yield own
        else:
            with conn.begin_nested():
                yield conn

    @contextmanager
    def _joined(self, conn: Connection | None) -> Iterator[Connection]:
        """The caller's transaction as it is (a failure undoes the caller's change too:
        the policy decision a held row's release follows), or a write transaction of
        its own."""
        if conn is None:
            with self._write() as own:
                yield own
        else:
            yield conn

    def _insert_once(
        self, caller: Connection | None, dedup: str, insert: Callable[[Connection], int]
    ) -> tuple[int, bool]:
        """(row id, new): the row already kept under ``dedup``, else the one ``insert``
        makes, within ``caller``'s transaction or one of its own (:meth:`_within`); a
        concurrent insert of the same key that won resolves to its row."""
        try:
            with self._within(caller) as conn:
                found = conn.execute(
                    sa.select(_outbox.c.id).where(_outbox.c.dedup_key == dedup)
                ).scalar()
                if found is not None:
                    return int(found), False
                return insert(conn), True
        except sa.exc.IntegrityError:  # a concurrent insert of the same dedup key: already
            raced = self._raced(caller, dedup)
            if raced is None:
                raise
            return raced, False

    def _raced(self, conn: Connection | None, dedup: str) -> int | None:
        """The row another writer inserted first under ``dedup`` (None: none, the
        IntegrityError was another one)."""
        query = sa.select(_outbox.c.id).where(_outbox.c.dedup_key == dedup)
        if conn is not None:
            found = conn.execute(query).scalar()
        else:
            with self.store.engine.connect() as own:
                found = own.execute(query).scalar()
        return None if found is None else int(found)

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
        record: int | None = None,
        purpose: str | None = None,
        dedup: str | None = None,
        links_wait: timedelta | None = None,
        replay_of: int | None = None,
        reason: str = "queued",
        conn: Connection | None = None,
        held: str | None = None,
        decision: int | None = None,
    ) -> tuple[int, bool]:
        """Queue ``bundle`` for ``partner`` as the parts its split makes; (row id, new).
        ``held``: kept ``held`` with its parts, that code as its ``last_error``, never
        sent until released (a referral's status the policy holds: _status.py).
        The same Bundle queued again for the same partner is the existing row (``dedup``:
        another key for "the same", e.g. of the converted Bundle before signing).
        Without ``order_key`` the Bundle's patient is the key (:func:`order_key_of`).
        ``links_wait``: how long the row waits for the records it links to
        (gateway/delivery/_links.py); None: it does not wait. ``conn``: within the
        caller's transaction (:meth:`_within`). ``decision``: the policy decision it is
        queued (or held) on, kept with its event."""
        now = now or self.clock()
        if dedup is None:
            raw = orjson.dumps(bundle, option=orjson.OPT_SORT_KEYS)
            dedup = hashlib.sha256(partner.key.encode() + b"|" + raw).hexdigest()
        parts = partner.split(bundle)
        if label is None:
            label = label_of(bundle)
        provides, needs = links_of(bundle)
        waits = bool(needs) and links_wait is not None

        def insert(conn: Connection) -> int:
            row_id = _insert(
                conn,
                now,
                message_id=message_id,
                partner=partner.key,
                label=label,
                order_key=order_key or order_key_of(bundle),
                dedup_key=dedup,
                parts=orjson.dumps(parts),
                part_count=len(parts),
                state="pending" if held is None else "held",
                last_error=held,
                record=record,
                purpose=purpose,
                replay_of=replay_of,
                links_until=now + links_wait if waits and links_wait is not None else None,
            )
            self._add_links(conn, row_id, provides, needs, patients_by_link(bundle), bundle)
            self._event(conn, row_id, now, None, "pending" if held is None else "held", 0, None,
                        reason, decision)  # fmt: skip
            if message_id is not None:
                self._sync_message(conn, message_id, now)
            return row_id

        return self._insert_once(conn, dedup, insert)

    def hold(
        self,
        partner: str,
        *,
        message_id: int,
        record: int,
        purpose: str | None,
        order_key: str | None,
        label: str | None,
        dedup: str,
        code: str,
        reason: str,
        now: datetime | None = None,
        conn: Connection | None = None,
        decision: int | None = None,
    ) -> tuple[int, bool]:
        """A row for a record a stage holds before anything can be sent (the policy:
        no consent yet): no parts until :meth:`fill` gives them. (row id, new).
        ``conn``: within the caller's transaction (:meth:`_within`); ``decision``: the
        policy decision that holds it, kept with its event."""
        now = now or self.clock()

        def insert(conn: Connection) -> int:
            row_id = _insert(
                conn,
                now,
                message_id=message_id,
                partner=partner,
                label=label,
                order_key=order_key,
                dedup_key=dedup,
                parts=b"[]",
                part_count=0,
                state="held",
                last_error=code,
                record=record,
                purpose=purpose,
            )
            self._event(conn, row_id, now, None, "held", 0, None, reason, decision)
            self._sync_message(conn, message_id, now)
            return row_id

        return self._insert_once(conn, dedup, insert)

    def fill(
        self,
        row_id: int,
        partner: Partner,
        bundle: dict[str, Any],
        reason: str,
        *,
        links_wait: timedelta | None = None,
        now: datetime | None = None,
        conn: Connection | None = None,
        decision: int | None = None,
    ) -> None:
        """Give a held row (:meth:`hold`) its Bundle and queue it: held → pending.
        ``conn``: in the caller's transaction (:meth:`_joined`); ``decision``: the
        policy decision it is queued on, kept with its event."""
        now = now or self.clock()
        parts = partner.split(bundle)
        provides, needs = links_of(bundle)
        waits = bool(needs) and links_wait is not None
        with self._joined(conn) as conn:
            self._add_links(conn, row_id, provides, needs, patients_by_link(bundle), bundle)
            self._move(
                conn,
                row_id,
                "held",
                "pending",
                reason,
                now,
                None,
                values={
                    "parts": orjson.dumps(parts),
                    "part_count": len(parts),
                    "part": 0,
                    "attempts": 0,
                    "next_at": now,
                    "last_error": None,
                    "links_until": now + links_wait if waits and links_wait else None,
                    "lease_until": None,
                },
                decision=decision,
            )

    def _add_links(
        self,
        conn: Connection,
        row_id: int,
        provides: set[Link],
        needs: set[Link],
        patients: dict[Link, frozenset[str]],
        bundle: dict[str, Any],
    ) -> None:
        """The row's links, each with its patient's hashed identifiers ("": none); and
        (role ``writes``) the identifiers of the other resources it updates that name a
        patient, for the overwrite guard (gateway/delivery/_overwrite.py)."""
        writes = written_links(bundle)
        patients = {**patients, **writes}
        rows = [
            {
                "outbox_id": row_id,
                "role": role,
                "kind": k,
                "system": s[:255],
                "ref": link_ref((k, s, v)),
                "patients": " ".join(sorted(patients.get((k, s, v), ()))),
            }
            for role, links in (("provides", provides), ("needs", needs), ("writes", set(writes)))
            for k, s, v in sorted(links)
        ]
        if rows:
            conn.execute(_links.insert(), rows)

    def dedup_row(self, dedup: str) -> OutboxRecord | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(_select().where(_outbox.c.dedup_key == dedup)).first()
        return _record(row) if row is not None else None

    def for_message(self, message_id: int) -> list[OutboxRecord]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                _select().where(_outbox.c.message_id == message_id).order_by(_outbox.c.id)
            ).all()
        return [_record(r) for r in rows]

    def delivered_links(self, row_id: int, needs: set[Link]) -> dict[Link, Provided]:
        """Which of ``needs`` (a row's) a delivered row provides at the row's partner,
        each with the patients of the row and of every delivered row providing it
        (:class:`Provided`: the link resolves only between records of one patient)."""
        if not needs:
            return {}
        by_ref = {link_ref(link): link for link in needs}
        target = _outbox.alias("target")
        me = _outbox.alias("me")
        query = (
            sa.select(_links.c.ref, _links.c.patients)
            .join(target, target.c.id == _links.c.outbox_id)
            .join(me, me.c.id == row_id)
            .where(
                _links.c.role == "provides",
                _links.c.ref.in_(list(by_ref)),
                target.c.partner == me.c.partner,
                target.c.state == "delivered",
            )
            .order_by(_links.c.id)
        )
        mine = sa.select(_links.c.ref, _links.c.patients).where(
            _links.c.outbox_id == row_id, _links.c.role == "needs"
        )
        providing: dict[str, list[frozenset[str] | None]] = {}
        with self.store.engine.connect() as conn:
            for ref, patients in conn.execute(query):
                providing.setdefault(ref, []).append(_patients(patients))
            needing = {ref: _patients(patients) for ref, patients in conn.execute(mine)}
        return {
            by_ref[ref]: Provided(needing.get(ref), tuple(found))
            for ref, found in providing.items()
        }

    def carried_by_others(
        self, row_id: int, refs: set[str]
    ) -> dict[str, list[frozenset[str] | None]]:
        """For the overwrite guard: of ``refs`` (:func:`link_ref` of identifiers a row
        updates), the hashed patients of every other row for the row's partner that
        carried one (provided or wrote it) and was queued before it or has begun
        sending (delivered, partly delivered, in flight, dead after trying): what the
        partner holds or will hold before this row, whatever the order of sending.

        A discarded row (a person gave up on it) is never sent again: it counts only
        if a request carrying it ever left (an event to ``sending``: delivered in part,
        refused after trying, or an ambiguous send the partner may have applied). One
        never sent (held for an overwrite or a link, for its partner, for a token)
        cannot be at the partner: counted, it held every later update of its
        identifier for a patient the partner never heard of, and with the partner's
        check off a release could never get past it."""
        if not refs:
            return {}
        other = _outbox.alias("other")
        me = _outbox.alias("me")
        begun = sa.or_(other.c.state.not_in(("pending", "held")), other.c.part > 0)
        sent = (
            sa.select(_events.c.id)
            .where(_events.c.outbox_id == other.c.id, _events.c.to_state == "sending")
            .exists()
        )
        query = (
            sa.select(_links.c.ref, _links.c.patients)
            .join(other, other.c.id == _links.c.outbox_id)
            .join(me, me.c.id == row_id)
            .where(
                _links.c.ref.in_(sorted(refs)),
                _links.c.role.in_(("provides", "writes")),
                other.c.partner == me.c.partner,
                other.c.id != row_id,
                sa.or_(other.c.id < row_id, begun),
                sa.or_(other.c.state != "discarded", sent),
            )
        )
        out: dict[str, list[frozenset[str] | None]] = {}
        with self.store.engine.connect() as conn:
            for ref, patients in conn.execute(query):
                out.setdefault(ref, []).append(_patients(patients))
        return out

    def released_since_overwrite(self, row_id: int) -> bool:
        """Whether a person released the row after its last hold for an overwrite
        (:data:`OVERWRITE`): then the partner is asked, not the outbox's record."""
        held = False
        for event in self.events(row_id):
            if event.to_state == "held":
                held = event.reason.startswith(OVERWRITE)
            elif held and (event.from_state, event.to_state) == ("held", "pending"):
                return True  # released (the only way out of such a hold but staying)
        return False

    def sync_message(self, message_id: int) -> str | None:
        """Set the message's state from its outbox rows (see :data:`_MESSAGE_STATE`)."""
        with self._write() as conn:
            return self._sync_message(conn, message_id, self.clock())

    @staticmethod
    def _sync_message(conn: Connection, message_id: int, now: datetime) -> str | None:
        o = _outbox.c
        present = set(
            conn.execute(
                sa.select(o.state).where(o.message_id == message_id).group_by(o.state)
            ).scalars()
        )
        state = next((name for name, states in _MESSAGE_STATE if present & set(states)), None)
        if state is not None:
            conn.execute(
                _messages.update()
                .where(_messages.c.id == message_id, _messages.c.state != state)
                .values(state=state, updated_at=now)
            )
        return state

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
        query = sa.select(e.at, e.from_state, e.to_state, e.part, e.status, e.reason, e.decision_id)
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
        """Rows to act on now, oldest first: due, not held by a worker, not waiting for
        a record they link to (until ``links_until``), first of their (partner, order
        key) among the undelivered — a row waiting for a linked record steps aside for
        its patient's later ones — and not for a partner in ``exclude`` (its breaker is
        open). Read only: :meth:`claim_due` is what a worker takes them with."""
        with self.store.engine.connect() as conn:
            return [_record(row) for row in conn.execute(_due_query(now, limit, exclude))]

    def claim_due(
        self, now: datetime, lease: timedelta, limit: int = 100, exclude: Sequence[str] = ()
    ) -> tuple[list[OutboxRecord], datetime]:
        """Take a batch of :meth:`due` rows for this worker until ``now + lease``, in one
        transaction; (the rows, the lease they hold: the claim's token for
        :meth:`renew` and :meth:`unclaim`).

        PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED``, so workers claiming at once get
        disjoint batches instead of all racing for the same first rows. SQLite (one
        writer at a time, ``BEGIN IMMEDIATE``): the compare-and-set on ``lease_until``.
        Per-patient order holds across workers: a patient's next row is not due while
        an earlier one, claimed or not, is undelivered."""
        until = now + lease
        query = _due_query(now, limit, exclude)
        if self.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=_outbox)
        o = _outbox.c
        with self._write() as conn:
            rows = [_record(row) for row in conn.execute(query)]
            if not rows:
                return [], until
            taken = set(
                conn.execute(
                    _outbox.update()
                    .where(o.id.in_([r.id for r in rows]), _free(now))
                    .values(lease_until=until)
                    .returning(o.id)
                ).scalars()
            )
        return [r for r in rows if r.id in taken], until

    def renew(self, record: OutboxRecord, token: datetime, now: datetime, lease: timedelta) -> bool:
        """Start on a claimed row: its lease runs from ``now`` again. False when the
        claim is no longer this worker's (it ran out and another worker took the row,
        or the row moved): the row is left alone. ``token``: the lease
        :meth:`claim_due` set; a later claim always sets a later one, so it tells this
        claim from any other."""
        o = _outbox.c
        with self._write() as conn:
            done = conn.execute(
                _outbox.update()
                .where(
                    o.id == record.id,
                    o.lease_until == token,
                    o.state == record.state,
                    o.part == record.part,
                )
                .values(lease_until=now + lease)
            )
            return bool(done.rowcount == 1)

    def keep(self, row_id: int, now: datetime, lease: timedelta) -> bool:
        """Extend a lease that has not run out (its worker is still waiting for the
        partner's answer): until ``now + lease``. A lease that ran out is not revived:
        the row may be another worker's by now. Whether it was extended."""
        o = _outbox.c
        with self._write() as conn:
            done = conn.execute(
                _outbox.update()
                .where(
                    o.id == row_id,
                    o.state.in_(("sending", "waiting")),
                    o.lease_until > now,
                )
                .values(lease_until=now + lease)
            )
            return bool(done.rowcount == 1)

    def unclaim(self, row_ids: Sequence[int], token: datetime) -> int:
        """Let go of claimed rows not begun (stopping, a breaker that opened): due
        again at once for any worker. Rows begun since (moved, renewed) are not
        touched. How many were let go."""
        if not row_ids:
            return 0
        o = _outbox.c
        with self._write() as conn:
            done = conn.execute(
                _outbox.update()
                .where(o.id.in_(list(row_ids)), o.lease_until == token, o.state.in_(DUE))
                .values(lease_until=None)
            )
            return int(done.rowcount)

    def stats(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Per partner: records by state, queue depth (not final), the oldest record
        not delivered yet (its age in seconds) and the end of a pause it asked for
        (Retry-After; None: none now)."""
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
        paused = self.paused_partners(now)
        for key, entry in out.items():
            # Why nothing of it moves: the partner asked for no request before then.
            entry["paused_until"] = _iso(paused[key][0]) if key in paused else None
            oldest = entry.pop("oldest_waiting")
            entry["oldest_waiting_at"] = _iso(oldest) if oldest else None
            entry["oldest_waiting_seconds"] = (
                round((now - oldest).total_seconds(), 3) if oldest else None
            )
        return [out[k] for k in sorted(out)]

    # -- a partner's Retry-After, for every worker -------------------------------------
    def pause_partner(self, partner: str, base: str, until: datetime, now: datetime) -> None:
        """Keep a partner's ``Retry-After`` for every worker on this store: no request
        to ``partner`` at ``base`` before ``until``. A later pause extends the one kept;
        an earlier one leaves it (one upsert: workers answered at once cannot lose the
        later); one from another base (the partner moved) replaces it."""
        upsert = conflict_insert(_pauses, self.store.dialect).values(
            partner=partner, base=base, until=until, asked_at=now
        )
        new = upsert.excluded
        upsert = upsert.on_conflict_do_update(
            index_elements=[_pauses.c.partner],
            set_={"base": new.base, "until": new.until, "asked_at": new.asked_at},
            where=sa.or_(_pauses.c.until < new.until, _pauses.c.base != new.base),
        )
        with self._write() as conn:
            conn.execute(upsert)

    def paused_partners(self, now: datetime) -> dict[str, tuple[datetime, str]]:
        """The partners that asked for no request before a time still to come: key ->
        (until, the base URL that asked); a primary-key table of one row a partner,
        read before every batch."""
        p = _pauses.c
        query = sa.select(p.partner, p.until, p.base).where(p.until > now)
        with self.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {partner: (until, base) for partner, until, base in rows}

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
                    _free(now),
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
        conn: Connection | None = None,
        held_as: str | None = None,
        decision: int | None = None,
        **values: Any,
    ) -> None:
        """One transition, with its event, in one transaction (``conn``: the caller's,
        :meth:`_joined`). ``lease``: keep holding the row (sending); otherwise the row
        is let go. ``held_as``: only while its ``last_error`` is that code (the worker's
        return of a row held for its partner: a row a person moved meanwhile is not
        its to move). ``decision``: the policy decision the move is made on, kept with
        its event. ``values``: columns to set. A row no longer ``from_state`` is a
        ``delivery.conflict`` (:meth:`_move`, the one path of every move)."""
        values["lease_until"] = now + lease if lease is not None else None
        with self._joined(conn) as conn:
            self._move(
                conn,
                row_id,
                from_state,
                to_state,
                reason,
                now,
                status,
                values,
                held_as=held_as,
                decision=decision,
            )

    def _move(
        self,
        conn: Connection,
        row_id: int,
        from_state: str,
        to_state: str,
        reason: str,
        now: datetime,
        status: int | None,
        values: dict[str, Any],
        unless_policy: str | None = None,
        *,
        held_as: str | None = None,
        quiet: bool = False,
        decision: int | None = None,
    ) -> bool:
        """One transition and its event in ``conn``: a compare-and-set on the row's state
        (and, with ``held_as``, on the code it is held for: the worker's return of rows
        held for their partner, :meth:`release_known`), setting ``values``; the message's
        state follows when a settled state (held, dead, delivered, discarded) is left or
        reached. ``unless_policy``: the error code when the row is held (or refused) by
        the policy as the update runs (a person's retry or release, checked before its
        transaction: a withdrawal committed since must win, never be overwritten).
        ``quiet``: a row moved meanwhile is no error, False is returned (nothing moved,
        no event); otherwise it is a ``delivery.conflict``. ``decision``: the policy
        decision the move is made on, kept with its event."""
        o = _outbox.c
        where = _row_in(row_id, from_state, held_as)
        if unless_policy is not None:
            where.append(sa.or_(o.last_error.is_(None), ~o.last_error.startswith("policy.")))
        done = conn.execute(
            _outbox.update()
            .where(*where)
            .values(state=to_state, updated_at=now, **values)
            .returning(o.part, o.message_id)
        ).first()
        if done is None and unless_policy is not None and self._policy_stopped(conn, row_id):
            raise DeliveryError(
                unless_policy,
                f"outbox record {row_id} is now held or refused by the policy (a consent "
                "withdrawn meanwhile): it is the policy's to decide again, nothing is queued",
            )
        if done is None and quiet:
            return False
        if done is None:
            held = f" held as {held_as}" if held_as is not None else ""
            raise DeliveryError(
                "delivery.conflict",
                f"outbox record {row_id} is no longer {from_state}{held} (another worker?)",
            )
        self._event(conn, row_id, now, from_state, to_state, int(done[0]), status, reason, decision)
        if done[1] is not None and _SETTLED & {from_state, to_state}:
            self._sync_message(conn, int(done[1]), now)
        return True

    @staticmethod
    def _policy_stopped(conn: Connection, row_id: int) -> bool:
        o = _outbox.c
        found = conn.execute(sa.select(o.last_error).where(o.id == row_id)).first()
        return found is not None and (found[0] or "").startswith("policy.")

    def recover(self, now: datetime) -> int:
        """Rows left ``sending`` by a worker that stopped (its lease ran out): the
        request may have been applied, so they wait for the partner to be asked.
        Several workers may recover at once: each row moves (and gets its event) once."""
        o = _outbox.c
        code = "delivery.interrupted"
        reason = f"{code}: the worker stopped while sending; ask first"
        query = sa.select(o.id, o.part).where(o.state == "sending", o.lease_until <= now)
        if self.store.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        moved = 0
        with self._write() as conn:
            for row_id, part in conn.execute(query).all():
                done = conn.execute(
                    _outbox.update()
                    .where(o.id == row_id, o.state == "sending", o.lease_until <= now)
                    .values(
                        state="waiting",
                        next_at=now,
                        lease_until=None,
                        updated_at=now,
                        last_error=code,
                    )
                )
                if done.rowcount == 1:
                    self._event(conn, row_id, now, "sending", "waiting", part, None, reason)
                    moved += 1
        return moved

    # -- a person's decisions (gateway outbox retry|replay|release) ---------------------
    # ``retry_in`` and ``replay_in`` queue parts again and decide nothing: the only
    # callers are ``Outbound.retry|replay`` (gateway/delivery/_outbound.py), which decide
    # again first and run them in the new decision's transaction, with the parts rebuilt
    # when today's decision changes the record (allow-with-changes). There is no public
    # retry/replay here on purpose: a record never crosses on a stale decision.
    def retry_in(
        self,
        conn: Connection | None,
        row_id: int,
        reason: str,
        now: datetime | None = None,
        parts: list[dict[str, Any]] | None = None,
        decision: int | None = None,
    ) -> int:
        """A dead row queued again from the part that failed (attempts start over), in
        ``conn`` (the caller's transaction, :meth:`_joined`) or one of its own.
        ``parts``: the record rebuilt today (today's minimisation) replaces the stored
        parts, sent from the first (each entry is conditional: the parts already
        delivered are applied again, changing nothing new)."""
        values = _rebuilt(parts)
        self._requeue(conn, row_id, "dead", "retry", reason, now, values, decision=decision)
        return row_id

    def release(self, row_id: int, reason: str, now: datetime | None = None) -> OutboxRecord:
        """A row the delivery stage held (an ambiguous send nobody could check, a partner
        no longer configured) queued again: its current part is sent. A row the policy
        holds is not released here (gateway.delivery.Outbound.release decides again);
        nor is a never-sent one a person releases: Outbound.release decides it again
        first and queues it with :meth:`release_in` (its consent may have expired).
        A row held from ``waiting`` because its partner was gone (``delivery.unknown-
        partner``: the partners' files are read again while running) goes back to
        ``waiting``: its last send was ambiguous, so the partner is asked first."""
        target = "waiting" if self._held_while_waiting(row_id) else "pending"
        self._requeue(None, row_id, "held", "release", reason, now, to_state=target)
        return self.require(row_id)

    def release_in(
        self,
        conn: Connection | None,
        row_id: int,
        reason: str,
        parts: list[dict[str, Any]] | None = None,
        now: datetime | None = None,
        held_as: str | None = None,
        decision: int | None = None,
    ) -> int:
        """A never-sent row delivery held queued again in ``conn`` (the caller's
        transaction: ``Outbound.release``'s new decision, with which it is kept);
        ``parts``: the record rebuilt under today's minimisation, sent from the first.
        ``held_as``: only while it is held for that code (the worker's return of a row
        held for its partner: a row a person moved meanwhile is left as it is)."""
        values = _rebuilt(parts)
        self._requeue(
            conn, row_id, "held", "release", reason, now, values, held_as=held_as, decision=decision
        )
        return row_id

    def release_known(
        self,
        partners: Collection[str],
        now: datetime | None = None,
        decide: Decide | None = None,
    ) -> list[Returned]:
        """Rows held only because their partner was not configured
        (:data:`UNKNOWN_PARTNER`) whose partner is among ``partners`` again (the
        partners' files read again, or a restart): back to the queue as a person's
        release would take them, each with its event. Other holds stay held.

        A never-sent row of a stored message (:meth:`never_sent`) is ``decide``d again
        first, as a person's release of it is (``Outbound.return_known``: a consent that
        expired or a rule that changed during the hold stops it; then it is held for
        the policy, ``policy.held``); with no ``decide`` it stays held, for a person's
        release (which decides again). Any other row (a part sent, held from
        ``waiting``, or of no stored message) is queued again as it is (``waiting`` when
        the hold came from ``waiting``: the partner is asked first), as a person's
        release queues it. Each move is a compare-and-set on the state and the hold's
        code: a row a person released (or another worker did) meanwhile is left as it
        is. Returns the rows looked at: (the row as it is now, the error that refused
        it; None: it moved)."""
        if not partners:
            return []
        now = now or self.clock()
        o = _outbox.c
        query = sa.select(
            o.id,
            o.partner,
            sa.and_(o.message_id.is_not(None), NEVER_SENT_HOLD).label("decided"),
            last_hold_from(_outbox, ("waiting",)).label("asked"),
        ).where(o.state == "held", o.last_error == UNKNOWN_PARTNER, o.partner.in_(sorted(partners)))
        with self.store.engine.connect() as conn:
            found = conn.execute(query.order_by(o.id)).all()
        out: list[Returned] = []
        for row_id, partner, decided, asked in found:
            reason = f"{UNKNOWN_PARTNER}: partner {partner} is configured again"
            if decided:
                if decide is not None:
                    out += self._decided(self.require(row_id), reason, decide)
                continue
            with self._write() as conn:
                if not self._move(
                    conn,
                    row_id,
                    "held",
                    "waiting" if asked else "pending",
                    f"release: {reason}",
                    now,
                    None,
                    {"attempts": 0, "next_at": now, "last_error": None, "lease_until": None},
                    held_as=UNKNOWN_PARTNER,
                    quiet=True,
                ):
                    continue
            out.append((self.require(row_id), None))
        return out

    def _decided(self, row: OutboxRecord, reason: str, decide: Decide) -> list[Returned]:
        """``row`` returned by ``decide`` (queued, or refused: the error, the row still
        held for its partner or now for the policy); [] when it moved meanwhile (a
        person's release, another worker's return): not this worker's to report.
        Any other fault of deciding it (a stored record that no longer parses...) is
        this row's alone, never the worker's: it stays held, refused, and the others
        go on (the worker's loop would otherwise meet it again at every batch)."""
        try:
            decide(row, reason)
        except GatewayError as exc:
            now = self.require(row.id)
            held = now.state == "held" and now.last_error in (UNKNOWN_PARTNER, "policy.held")
            if exc.code == "delivery.conflict" or not held:
                return []
            if now.last_error == UNKNOWN_PARTNER:  # not the policy's hold: say what it is
                now = self._return_refused(row.id, reason, exc)
            return [(now, exc)]
        except Exception as exc:  # one record's fault: logged by its id, as _handle does
            log.exception("outbox record %s: deciding it again failed", row.id)
            failed = DeliveryError(
                "delivery.not-releasable",
                f"outbox record {row.id} cannot be released: deciding it again failed "
                f"({type(exc).__name__})",
            )
            now = self.require(row.id)
            if now.state != "held" or now.last_error != UNKNOWN_PARTNER:
                return []
            return [(self._return_refused(row.id, reason, failed), failed)]
        return [(self.require(row.id), None)]

    def _return_refused(self, row_id: int, reason: str, refused: GatewayError) -> OutboxRecord:
        """A row whose return (``reason``) was refused for a reason not the policy's:
        held → held for :data:`RETURN_REFUSED`, the refusal named in its event. Left
        held for its partner, it read as "not configured" though it is again. No longer
        returned by the worker: a person's release decides it again (its hold still
        counts from where it came, :func:`last_hold_from`). A compare-and-set on the
        hold: a row a person moved meanwhile is left as it is."""
        with self._write() as conn:
            self._move(
                conn,
                row_id,
                "held",
                "held",
                f"{RETURN_REFUSED}: release ({reason}) refused: {refused.code}: "
                f"{refused.issue.message}; gateway outbox release {row_id} decides it again",
                self.clock(),
                None,
                {"last_error": RETURN_REFUSED},
                held_as=UNKNOWN_PARTNER,
                quiet=True,
            )
        return self.require(row_id)

    def _held_while_waiting(self, row_id: int) -> bool:
        """Whether the row is held for an unknown partner since a send that was ambiguous
        (its hold came from ``waiting``): nobody asked the partner about it."""
        o = _outbox.c
        query = sa.select(o.id).where(
            o.id == row_id,
            o.last_error == UNKNOWN_PARTNER,
            last_hold_from(_outbox, ("waiting",)),
        )
        with self.store.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def never_sent(self, row_id: int) -> bool:
        """Whether row ``row_id`` is held by delivery and was never sent
        (:data:`NEVER_SENT_HOLD`): every way out of such a hold with no decision (a
        person's release, the worker's return of a partner back) decides it again first
        (``Outbound.release``, ``Outbound.return_known``)."""
        query = sa.select(_outbox.c.id).where(_outbox.c.id == row_id, NEVER_SENT_HOLD)
        with self.store.engine.connect() as conn:
            return conn.execute(query).first() is not None

    def discard(self, row_id: int, reason: str, now: datetime | None = None) -> OutboxRecord:
        """A person gives up on a held or dead row (``gateway outbox discard``): it moves
        to ``discarded``, final, and is never sent (no worker claims it; retry, release
        and replay refuse it); its patient's later rows stop waiting for it. Its
        ``last_error`` stays: what it was held or dead for. The move is a compare-and-set
        on the state checked: a row moved meanwhile (released, filled) is refused.
        Read and checked in the write transaction (locked): a row released and held
        again meanwhile, now by the policy, is seen as it is, never discarded."""
        now = now or self.clock()
        with self._write() as conn:
            query = _select().where(_outbox.c.id == row_id)
            if self.store.dialect == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None:
                raise DeliveryError("delivery.not-found", f"no outbox record {row_id}")
            record = _record(row)
            self.check_discard(record)
            self._move(
                conn,
                row_id,
                record.state,
                "discarded",
                f"discard: {reason}",
                now,
                None,
                {"lease_until": None},
            )
        return self.require(row_id)

    @staticmethod
    def check_discard(record: OutboxRecord) -> None:
        """Raise unless a person may discard this row: a held or dead one, not one the
        policy holds (no consent yet: the policy decides it again when one arrives, and
        its hold decision waits with the row: discarding the row would leave that
        decision to be released with no row to follow it)."""
        if record.state not in DISCARDABLE:
            raise DeliveryError(
                "delivery.not-discardable",
                f"outbox record {record.id} cannot be discarded: it is {record.state} "
                "(only a held or dead record can be)",
            )
        # A referral status the policy held waits for no consent: a person may give it up.
        held = record.last_error or ""
        if record.state == "held" and held.startswith("policy.") and held != "policy.status-held":
            raise DeliveryError(
                "delivery.not-discardable",
                f"outbox record {record.id} cannot be discarded: the policy holds it "
                f"({record.last_error}); it is decided again when a consent arrives",
            )

    @staticmethod
    def check_requeue(record: OutboxRecord, action: str) -> None:
        """Raise unless a person may ``action`` (retry, release, replay) this row: retry a
        ``dead`` one, release a ``held`` one, replay a ``delivered`` one; a row the policy
        stopped is the policy's to decide again, never a person's to push through."""
        if action == "replay":
            if record.state != "delivered":
                raise DeliveryError(
                    "delivery.not-replayable",
                    f"outbox record {record.id} cannot be replayed: it is {record.state}",
                )
            return
        state = "dead" if action == "retry" else "held"
        if record.state != state or (record.last_error or "").startswith("policy."):
            policy = "the policy refused it" if state == "dead" else "the policy holds it"
            why = policy if record.state == state else f"it is {record.state}"
            code = "delivery.not-retryable" if action == "retry" else "delivery.not-releasable"
            verb = "retried" if action == "retry" else "released"
            raise DeliveryError(code, f"outbox record {record.id} cannot be {verb}: {why}")

    def _requeue(
        self,
        conn: Connection | None,
        row_id: int,
        state: str,
        action: str,
        reason: str,
        now: datetime | None,
        values: dict[str, Any] | None = None,
        to_state: str = "pending",
        held_as: str | None = None,
        decision: int | None = None,
    ) -> None:
        """A person's retry (of a ``dead`` row) or release (of a ``held`` one): back to
        ``pending`` (or ``to_state``) at its current part, attempts from zero.
        ``values``: more columns to set (a retry's rebuilt parts); ``held_as``: only
        while held for that code (:meth:`_move`)."""
        now = now or self.clock()
        self.check_requeue(self.require(row_id), action)
        with self._joined(conn) as conn:
            self._move(
                conn,
                row_id,
                state,
                to_state,
                f"{action}: {reason}",
                now,
                None,
                {
                    "attempts": 0,
                    "next_at": now,
                    "last_error": None,
                    "lease_until": None,
                    **(values or {}),
                },
                unless_policy=(
                    "delivery.not-retryable" if action == "retry" else "delivery.not-releasable"
                ),
                held_as=held_as,
                decision=decision,
            )

    def replay_in(
        self,
        conn: Connection | None,
        row_id: int,
        reason: str,
        now: datetime | None = None,
        parts: list[dict[str, Any]] | None = None,
        decision: int | None = None,
    ) -> int:
        """A delivered row queued again as a new row with the same parts (exactly what
        left the first time), or with ``parts`` (the record rebuilt under today's
        minimisation); the original stays delivered. In ``conn`` (the caller's
        transaction) or one of its own; returns the new row's id."""
        now = now or self.clock()
        record = self.require(row_id)
        self.check_requeue(record, "replay")
        o = _outbox.c
        with self._joined(conn) as conn:
            row = conn.execute(sa.select(o.dedup_key, o.parts).where(o.id == row_id)).one()
            # An explicit replay is a new row: its own dedup key.
            dedup = hashlib.sha256(
                f"{row.dedup_key}|replay|{now.isoformat()}|{self._count(conn, row_id)}".encode()
            ).hexdigest()
            new_id = _insert(
                conn,
                now,
                message_id=record.message_id,
                partner=record.partner,
                label=record.label,
                order_key=record.order_key,
                dedup_key=dedup,
                parts=row.parts if parts is None else orjson.dumps(parts),
                part_count=record.part_count if parts is None else len(parts),
                state="pending",
                record=record.record,
                purpose=record.purpose,
                replay_of=row_id,
            )
            self._event(
                conn, new_id, now, None, "pending", 0, None, f"replay of {row_id}: {reason}",
                decision,
            )  # fmt: skip
            self._event(
                conn,
                row_id,
                now,
                "delivered",
                "delivered",
                record.part,
                None,
                f"replayed as {new_id}: {reason}",
                decision,
            )
            if record.message_id is not None:
                self._sync_message(conn, record.message_id, now)
        return new_id

    @staticmethod
    def _count(conn: Connection, row_id: int) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(_outbox.c.replay_of == row_id)
            ).scalar_one()
        )

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
        decision: int | None = None,
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
                decision_id=decision,
            )
        )


def _row_in(row_id: int, state: str, held_as: str | None) -> list[sa.ColumnElement[bool]]:
    """SQL: row ``row_id`` is in ``state`` (and, with ``held_as``, held for that code):
    a move's compare-and-set."""
    o = _outbox.c
    where = [o.id == row_id, o.state == state]
    if held_as is not None:
        where.append(o.last_error == held_as)
    return where


def _rebuilt(parts: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    """The columns a retry or release sets for a record rebuilt as ``parts`` (sent from
    the first); None: the row keeps its parts."""
    if parts is None:
        return None
    return {"parts": orjson.dumps(parts), "part_count": len(parts), "part": 0}


def last_hold_from(row: Any, states: Collection[str | None]) -> sa.ColumnElement[bool]:
    """SQL: ``row`` (the outbox table or an alias) is held, and the move that held it
    last came from one of ``states`` (None: it was made held). A held row's last event
    but its re-holds (``held → held``: another reason, the row still held) is the move
    into ``held``: where its hold came from (an ambiguous send's ``waiting``, a queued
    row...) is that event's ``from_state``; a re-hold does not change it."""
    e, later = _events.alias("hold").c, _events.alias("later").c
    # not a re-hold (spelt out: a NULL from_state, a row made held, must count)
    moved = sa.or_(later.from_state.is_(None), later.from_state != "held", later.to_state != "held")
    last = (
        sa.select(sa.func.max(later.id))
        .where(later.outbox_id == row.c.id, moved)
        .correlate(row)  # the row's: in a WHERE as in a column, however deep
        .scalar_subquery()
    )
    named = [s for s in states if s is not None]
    came = sa.or_(
        e.from_state.in_(named) if named else sa.false(),
        e.from_state.is_(None) if None in states else sa.false(),
    )
    found = sa.select(e.id).where(e.id == last, e.to_state == "held", came).exists()
    return sa.and_(row.c.state == "held", found)


def _never_sent_hold() -> sa.ColumnElement[bool]:
    """SQL: an outbox row held for a reason of delivery's (any code but the policy's),
    no part sent, its hold come from a state before any send was ambiguous
    (:data:`HELD_UNSENT_FROM`): every way out of it with no decision is decided again."""
    o = _outbox.c
    return sa.and_(
        sa.or_(o.last_error.is_(None), ~o.last_error.startswith("policy.")),
        o.part == 0,
        last_hold_from(_outbox, HELD_UNSENT_FROM),
    )


NEVER_SENT_HOLD = _never_sent_hold()


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
        o.record,
        o.purpose,
        o.replay_of,
        o.links_until,
    )


def _free(now: datetime) -> Any:
    """SQL: no worker holds the row (never leased, or its lease ran out)."""
    o = _outbox.c
    return sa.or_(o.lease_until.is_(None), o.lease_until <= now)


def _due_query(now: datetime, limit: int, exclude: Sequence[str]) -> sa.Select[Any]:
    """The rows :meth:`Outbox.due` describes, oldest first, at most ``limit``."""
    o = _outbox
    earlier = o.alias("earlier")
    blocked = (
        sa.select(earlier.c.id)
        .where(
            earlier.c.partner == o.c.partner,
            earlier.c.order_key == o.c.order_key,  # NULL = NULL is not true: no order
            earlier.c.id < o.c.id,
            earlier.c.state.not_in(_DONE),
            ~_unmet(earlier, now),
            ~_stands_aside(earlier),
        )
        .exists()
    )
    return (
        _select()
        .where(
            o.c.state.in_(DUE),
            o.c.next_at <= now,
            _free(now),
            ~_unmet(o, now),
            ~blocked,
            o.c.partner.not_in(exclude) if exclude else sa.true(),
        )
        .order_by(o.c.id)
        .limit(limit)
    )


def _stands_aside(row: Any) -> Any:
    """SQL: ``row`` is held because its update would replace another patient's record
    (gateway/delivery/_overwrite.py): it will never be sent as it is, so its patient's
    later records do not wait for it (one updating the same identifier is held too)."""
    held_as = sa.func.coalesce(row.c.last_error, "")
    return sa.and_(row.c.state == "held", held_as == OVERWRITE)


def _unmet(row: Any, now: datetime) -> Any:
    """SQL: ``row`` (an outbox table or alias) still waits for a record it links to:
    within its ``links_until``, one of its needs is provided by no row delivered to its
    partner."""
    need = _links.alias("need")
    given = _links.alias("given")
    target = _outbox.alias("target")
    provided = (
        sa.select(given.c.id)
        .join(target, target.c.id == given.c.outbox_id)
        .where(
            given.c.ref == need.c.ref,
            given.c.role == "provides",
            target.c.partner == row.c.partner,
            target.c.state == "delivered",
        )
        .exists()
    )
    missing = (
        sa.select(need.c.id)
        .where(need.c.outbox_id == row.c.id, need.c.role == "needs", ~provided)
        .exists()
    )
    return sa.and_(row.c.links_until.is_not(None), row.c.links_until > now, missing)


def _patients(stored: str | None) -> frozenset[str] | None:
    """A link row's hashed patient identifiers; None: not recorded (queued before
    migration v0011_link_patients)."""
    return None if stored is None else frozenset(stored.split())


def _record(row: Any) -> OutboxRecord:
    return OutboxRecord(*row)


def _insert(conn: Connection, now: datetime, **values: Any) -> int:
    """A new outbox row (queued, held or replayed): from its first part, no attempt
    yet, due and dated ``now``. Returns its id."""
    row = {"part": 0, "attempts": 0, "next_at": now, "created_at": now, "updated_at": now}
    query = _outbox.insert().values(**row, **values).returning(_outbox.c.id)
    return int(conn.execute(query).scalar_one())
