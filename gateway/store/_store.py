"""The message store: what came in (original bytes, from whom, how), its state, and
what each stage made of it. One interface over SQLite and PostgreSQL.

Every write is one transaction; ``receive`` returns only once its row is committed
(SQLite with synchronous=FULL), which is what lets a listener acknowledge.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ..config import MESSAGE_STATES
from ..errors import GatewayError, Issue
from ._engine import conflict_insert, database_url, make_engine
from ._schema import dicom_instances, dicom_known_studies, message_patients, messages, outcomes

__all__ = [
    "CHANNELS",
    "NEVER_PRUNED",
    "SENDER_REFUSALS",
    "STATES",
    "DicomInstance",
    "Incoming",
    "KnownStudy",
    "MessageFilter",
    "MessageSummary",
    "Page",
    "Receipt",
    "StageOutcome",
    "Store",
    "StoreError",
    "StoredMessage",
    "StoredOutcome",
    "issue_json",
    "study_zip",
    "utcnow",
]

# A message's state: where it is in the gateway. "received" is stored, not yet
# processed; held/outbox/denied are the policy stage's (gateway/policy: outbox = allowed
# or released, waiting for delivery); queued/delivered/dead/discarded belong to delivery
# (dead: a partner refused it or delivery gave up; discarded: a person gave up on a
# record, gateway outbox discard; held is also delivery's, for a person).
STATES = MESSAGE_STATES  # listed in gateway/config.py: retention_days is keyed by them
# States of a message still waiting for the gateway to act: never pruned.
NEVER_PRUNED = frozenset({"received", "held", "outbox", "queued"})
CHANNELS = ("mllp", "api", "cli", "dicom", "stow")
_MIGRATIONS = Path(__file__).with_name("migrations")

# The statements every stage outcome runs (Store._add_outcome), built once.
_o, _m = outcomes.c, messages.c
_ATTEMPTS = sa.select(sa.func.count()).where(
    _o.message_id == sa.bindparam("m"), _o.stage == sa.bindparam("s")
)
_SUPERSEDE = outcomes.update().where(
    _o.message_id == sa.bindparam("m"), _o.stage == sa.bindparam("s"), _o.current.is_(True)
)
_ADD_OUTCOME = outcomes.insert().returning(_o.id)
# The message's state; with what the stage learnt of it, kept where intake did not know
# it. Without the coalesces when the stage learnt nothing (policy, route): SQLite
# rewrites every index of a column SET, even to itself (4 index pages per commit).
_MESSAGE_STATE = messages.update().where(_m.id == sa.bindparam("m"))
_MESSAGE_LEARNT = _MESSAGE_STATE.values(
    control_id=sa.func.coalesce(_m.control_id, sa.bindparam("new_control_id", type_=sa.String())),
    message_type=sa.func.coalesce(
        _m.message_type, sa.bindparam("new_message_type", type_=sa.String())
    ),
    sender=sa.func.coalesce(_m.sender, sa.bindparam("new_sender", type_=sa.String())),
    charset=sa.func.coalesce(_m.charset, sa.bindparam("new_charset", type_=sa.String())),
)


# The listeners' sender checks (MLLP: certificate vs MSH-4; DICOM: a bound API token or
# certificate vs the study's identifiers): a message refused for its sender is taken on
# its row again only from a connection that ran that check (MLLP with a client
# certificate): the same bytes over plain MLLP would file it in the name of an
# institution that did not send it. (A refused DICOM study's row names its sender, the
# authenticated institution; a commit names none, so it is never that row.) Nor is it
# converted from the store (gateway/processing.py: sender_refusal). Code -> why.
SENDER_REFUSALS = {
    "intake.mllp-sender-mismatch": "its MSH-4 does not name the institution whose "
    "certificate sent it",
    "intake.mllp-client-no-institution": "the certificate that sent it names no institution",
    "intake.dicom-sender-mismatch": "its identifiers do not name the institution whose "
    "API token or certificate sent it",
}


def _sender_checked(item: Incoming) -> bool:
    """Whether ``item`` came over a connection that checked its sender against MSH-4."""
    return item.channel == "mllp" and item.auth_sender is not None


def _refused_for_sender(conn: Connection, message_id: int) -> bool:
    """Whether a message's current intake outcome is a refusal by the sender check."""
    return any(
        i.get("code") in SENDER_REFUSALS for i in _current_issues(conn, message_id, "intake")
    )


def _last_revision(conn: Connection, item: Incoming) -> int | None:
    """The latest revision stored of ``item``'s sender and control id, or None. A row
    refused for its sender counts only for a later attempt refused for its sender from
    the same certificate common name: a spoofer's refused message would otherwise make
    the real sender's next message with that control id look like a revision of it
    (flagged, revision 2). Never for an accepted message: the common name names no
    institution (a certificate naming none may carry the real sender's)."""
    if not item.control_id:
        return None
    m = messages.c
    rows = conn.execute(
        sa.select(m.id, m.revision, m.state, m.auth_sender).where(
            m.control_id == item.control_id, _same(m.sender, item.sender)
        )
    ).all()
    refused = item.auth_sender is not None and any(i.code in SENDER_REFUSALS for i in item.issues)
    counted = [
        int(r.revision)
        for r in rows
        if r.state != "rejected"
        or (refused and r.auth_sender == item.auth_sender)
        or not _refused_for_sender(conn, r.id)
    ]
    return max(counted, default=None)


def _current_issues(conn: Connection, message_id: int, stage: str) -> list[dict[str, Any]]:
    """The issues of a message's current outcome of ``stage``."""
    found = conn.execute(
        sa.select(outcomes.c.issues).where(
            outcomes.c.message_id == message_id,
            outcomes.c.stage == stage,
            outcomes.c.current.is_(True),
        )
    ).scalars()
    return [i for issues in found for i in orjson.loads(issues or "[]")]


class StoreError(GatewayError):
    """The store cannot do what was asked (no such message, content pruned, bad cursor,
    database unreachable)."""

    family = "store"


def utcnow() -> datetime:
    """Now, as the store keeps times: naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def stamp_after(now: datetime, previous: datetime | None) -> datetime:
    """A new version's write time (naive UTC): ``now``, at least a millisecond (its
    ``meta.lastUpdated``'s precision) after ``previous``, when the version it replaces
    was written (None: a first version). Conditional reads compare dates with it
    (If-Modified-Since, a read batch's ``ifModifiedSince``): a version stamped no later
    than the one a client held (the clock read in the same millisecond or stepped back;
    a time taken before the transaction waited for another's lock) was 304 Not Modified
    to that client, the newer one (an updated record, a withdrawn Consent) hidden.
    Inbound records and Consents are stamped so."""
    if previous is None:
        return now
    floor = previous.replace(microsecond=previous.microsecond // 1000 * 1000)
    return max(now, floor + timedelta(milliseconds=1))


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message as it arrives, before any stage has looked at it."""

    raw: bytes
    channel: str  # mllp, api, cli, dicom, stow
    format: str = "hl7v2"
    peer: str | None = None
    auth_sender: str | None = None
    sender: str | None = None  # sending facility, when the listener could read it
    control_id: str | None = None
    message_type: str | None = None
    charset: str | None = None
    state: str = "received"  # "rejected" for bytes a listener refused (with ``issues``)
    issues: tuple[Issue, ...] = ()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """What ``receive`` did: the row, and whether it was already there."""

    id: int
    duplicate: bool  # the same sender, control id and bytes: the earlier row
    revision: int
    flagged: bool  # an earlier message had this control id and other bytes
    state: str


@dataclass(frozen=True, slots=True)
class StageOutcome:
    """What one stage made of a message; :func:`gateway.store.outcome_of` builds it."""

    stage: str
    state: str
    output: bytes | None = None
    issues: tuple[Issue, ...] = ()
    patients: tuple[str, ...] = ()  # "system|value" identifiers found
    # What the stage learnt of the message (the store keeps what intake did not know).
    control_id: str | None = None
    message_type: str | None = None
    sender: str | None = None
    charset: str | None = None


@dataclass(frozen=True, slots=True)
class StoredOutcome:
    id: int
    attempt: int
    stage: str
    state: str
    at: datetime
    duration_ms: int | None
    output: bytes | None
    issues: list[dict[str, Any]]
    current: bool


@dataclass(frozen=True, slots=True)
class MessageSummary:
    id: int
    received_at: datetime
    channel: str
    peer: str | None
    auth_sender: str | None
    sender: str | None
    control_id: str | None
    message_type: str | None
    format: str
    charset: str | None
    sha256: str
    size: int
    state: str
    revision: int
    flagged: bool
    updated_at: datetime
    pruned_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = _iso(value) if isinstance(value, datetime) else value
        return out


@dataclass(frozen=True, slots=True)
class StoredMessage:
    summary: MessageSummary
    raw: bytes | None  # None once pruned
    outcomes: list[StoredOutcome]
    patients: list[str]

    @property
    def id(self) -> int:
        return self.summary.id

    @property
    def state(self) -> str:
        return self.summary.state


@dataclass(frozen=True, slots=True)
class MessageFilter:
    state: str | None = None
    sender: str | None = None
    message_type: str | None = None
    since: datetime | None = None  # received at or after (naive UTC)
    patient: str | None = None  # "system|value", or a value alone
    control_id: str | None = None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[MessageSummary]
    next: str | None  # the cursor of the next page (``after=``), None on the last


@dataclass(frozen=True, slots=True)
class DicomInstance:
    """One DICOM instance as received (C-STORE or STOW-RS), pixel data already dropped."""

    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes  # Part 10 bytes
    channel: str = "dicom"
    peer: str | None = None  # calling AE title (and address)
    sender: str | None = None  # facility code configured for that peer


@dataclass(frozen=True, slots=True)
class KnownStudy:
    """Every instance the DICOM listeners took of a study, in any of its messages: kept
    when retention drops the instances and their messages' content."""

    study_uid: str
    sop_uids: frozenset[str]  # SOP Instance UIDs
    message_id: int | None  # the newest message that added to them


_SUMMARY_COLUMNS = [c for c in messages.c if c.name not in ("raw", "dedup_key")]


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds") + "Z"


def _dedup_key(sender: str | None, control_id: str | None, sha: str) -> str:
    key = "\x1f".join((sender or "", control_id or "", sha))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def issue_json(issue: Issue) -> dict[str, Any]:
    """An issue as stored: no record label (the message is the record)."""
    out: dict[str, Any] = {"code": issue.code, "severity": issue.severity, "message": issue.message}
    if issue.location:
        out["location"] = issue.location
    if issue.fhirpath:  # the FHIR element (FHIRPath), as OperationOutcome.issue.expression
        out["expression"] = issue.fhirpath
    return out


class Store:
    """The message store over one database. Thread-safe: share one per process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self.dialect = engine.dialect.name

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Store:
        """The store at ``url`` (a SQLAlchemy URL), migrated to the current schema."""
        store = cls(make_engine(url))
        if upgrade:
            store.upgrade()
        return store

    @classmethod
    def for_home(cls, home: Path, url: str | None = None, *, upgrade: bool = True) -> Store:
        """The configured store: ``url`` or $GATEWAY_HOME/gateway.db."""
        return cls.open(database_url(home, url), upgrade=upgrade)

    def close(self) -> None:
        self.engine.dispose()

    # -- schema -----------------------------------------------------------------------
    def upgrade(self, revision: str = "head") -> None:
        """Run the Alembic migrations up to ``revision`` (idempotent)."""
        from alembic import command  # imported here: `gateway convert` needs no store
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(_MIGRATIONS))
        with self._writer.begin() as conn:
            if self.dialect == "postgresql":  # two gateways starting at once: one migrates
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727746)")
            config.attributes["connection"] = conn
            command.upgrade(config, revision)

    def revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            rev: str | None = MigrationContext.configure(conn).get_current_revision()
            return rev

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    # -- intake -----------------------------------------------------------------------
    def receive(self, incoming: Incoming) -> Receipt:
        """Store one message; returns once it is committed."""
        return self.receive_many([incoming])[0]

    def receive_many(self, batch: Sequence[Incoming]) -> list[Receipt]:
        """Store several messages in one transaction (one fsync: a listener's group
        commit). All or none are stored."""
        with self._write() as conn:
            return [self._receive(conn, item) for item in batch]

    def _receive(self, conn: Connection, item: Incoming, now: datetime | None = None) -> Receipt:
        now = now or utcnow()
        item = _fit(item)
        sha = item.sha256
        key = _dedup_key(item.sender, item.control_id, sha)
        found = conn.execute(
            sa.select(
                messages.c.id, messages.c.revision, messages.c.flagged, messages.c.state
            ).where(messages.c.dedup_key == key)
        ).first()
        if found is not None:
            if found.state == "rejected" and item.state != "rejected":
                if not _sender_checked(item) and _refused_for_sender(conn, found.id):
                    # only a connection that passed the sender check may release it
                    return Receipt(found.id, True, found.revision, found.flagged, found.state)
                return self._accept_refused(conn, found, item, now)
            return Receipt(found.id, True, found.revision, found.flagged, found.state)
        revision, flagged = 1, False
        last = _last_revision(conn, item)
        if last is not None:
            revision, flagged = last + 1, True
        values = {
            "received_at": now,
            "channel": item.channel,
            "peer": item.peer,
            "auth_sender": item.auth_sender,
            "sender": item.sender,
            "control_id": item.control_id,
            "message_type": item.message_type,
            "format": item.format,
            "charset": item.charset,
            "sha256": sha,
            "size": len(item.raw),
            "raw": item.raw,
            "state": item.state,
            "revision": revision,
            "flagged": flagged,
            "dedup_key": key,
            "updated_at": now,
        }
        new_id = self._insert_ignore(conn, values)
        if new_id is None:  # another process stored the same message meanwhile
            row = conn.execute(
                sa.select(
                    messages.c.id, messages.c.revision, messages.c.flagged, messages.c.state
                ).where(messages.c.dedup_key == key)
            ).one()
            return Receipt(row.id, True, row.revision, row.flagged, row.state)
        if item.issues:
            self._add_outcome(
                conn,
                new_id,
                StageOutcome("intake", item.state, issues=item.issues),
                None,
                now,
            )
        return Receipt(new_id, False, revision, flagged, item.state)

    def _accept_refused(
        self, conn: Connection, found: Any, item: Incoming, now: datetime
    ) -> Receipt:
        """The bytes of a refused message, now accepted (the operator fixed what refused
        them: the sender's charset, a limit; or the institution MSH-4 names sent them over
        its own connection): the same row takes the new state, the accepting connection
        (peer, authenticated sender, channel) and its content back if it was pruned; the
        refusal stays among its outcomes, no longer current (reprocessing reads it:
        gateway/processing.py). Answered as a duplicate, it would be acknowledged yet
        stay 'rejected': never converted, and pruned after the rejected retention."""
        m = messages.c
        conn.execute(
            messages.update()
            .where(m.id == found.id)
            .values(
                state=item.state,
                raw=item.raw,
                pruned_at=None,
                updated_at=now,
                channel=item.channel,
                peer=item.peer,
                auth_sender=item.auth_sender,
                message_type=sa.func.coalesce(m.message_type, item.message_type),
                charset=sa.func.coalesce(m.charset, item.charset),
            )
        )
        conn.execute(_SUPERSEDE, {"m": found.id, "s": "intake", "current": False})
        return Receipt(found.id, False, found.revision, found.flagged, item.state)

    def _insert_ignore(self, conn: Connection, values: dict[str, Any]) -> int | None:
        stmt = (
            conflict_insert(messages, self.dialect)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["dedup_key"])
            .returning(messages.c.id)
        )
        new_id = conn.execute(stmt).scalar()
        return None if new_id is None else int(new_id)

    # -- stages -----------------------------------------------------------------------
    def record_outcome(
        self,
        message_id: int,
        outcome: StageOutcome,
        duration_ms: int | None = None,
        within: Callable[[Connection], None] | None = None,
        conn: Connection | None = None,
    ) -> StoredOutcome:
        """Keep what a stage made of a message, and move the message to its state.
        Earlier outcomes of the stage stay (``current`` false). ``within(conn)`` runs
        in the same write transaction (the audit trail's events: no commit of their own).
        ``conn``: in the caller's write transaction instead (its commit is the caller's:
        the policy decision and its outbox row, gateway/policy/_records.py)."""
        if conn is not None:
            stored = self._add_outcome(conn, message_id, outcome, duration_ms, utcnow())
            if within is not None:
                within(conn)
            return stored
        with self._write() as own:
            stored = self._add_outcome(own, message_id, outcome, duration_ms, utcnow())
            if within is not None:
                within(own)
            return stored

    def _add_outcome(
        self,
        conn: Connection,
        message_id: int,
        outcome: StageOutcome,
        duration_ms: int | None,
        now: datetime,
    ) -> StoredOutcome:
        # Statements built once (module level), values bound per call: building them
        # with .values() per call cost several times their execution (bench_policy).
        attempt = conn.execute(_ATTEMPTS, {"m": message_id, "s": outcome.stage}).scalar_one() + 1
        conn.execute(_SUPERSEDE, {"m": message_id, "s": outcome.stage, "current": False})
        issues = [issue_json(i) for i in outcome.issues]
        new_id = conn.execute(
            _ADD_OUTCOME,
            {
                "message_id": message_id,
                "attempt": attempt,
                "stage": outcome.stage,
                "state": outcome.state,
                "at": now,
                "duration_ms": duration_ms,
                "output": outcome.output,
                "issues": orjson.dumps(issues).decode(),
                "current": True,
            },
        ).scalar_one()
        state = {"m": message_id, "state": outcome.state, "updated_at": now}
        learnt = {
            "new_control_id": _clip(outcome.control_id, "control_id"),
            "new_message_type": _clip(outcome.message_type, "message_type"),
            "new_sender": _clip(outcome.sender, "sender"),
            "new_charset": _clip(outcome.charset, "charset"),
        }
        if any(v is not None for v in learnt.values()):
            conn.execute(_MESSAGE_LEARNT, {**state, **learnt})
        else:
            conn.execute(_MESSAGE_STATE, state)
        if outcome.patients or outcome.stage == "convert":
            self._set_patients(conn, message_id, outcome.patients)
        return StoredOutcome(
            int(new_id),
            attempt,
            outcome.stage,
            outcome.state,
            now,
            duration_ms,
            outcome.output,
            issues,
            True,
        )

    def _set_patients(self, conn: Connection, message_id: int, patients: Iterable[str]) -> None:
        conn.execute(message_patients.delete().where(message_patients.c.message_id == message_id))
        rows = [
            {"message_id": message_id, "identifier": p[:255], "value": p.rpartition("|")[2][:255]}
            for p in dict.fromkeys(patients)
        ]
        if rows:
            conn.execute(message_patients.insert(), rows)

    def set_state(self, message_id: int, state: str) -> None:
        with self._write() as conn:
            conn.execute(
                messages.update()
                .where(messages.c.id == message_id)
                .values(state=state, updated_at=utcnow())
            )

    # -- reading ----------------------------------------------------------------------
    def get(self, message_id: int) -> StoredMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*_SUMMARY_COLUMNS, messages.c.raw).where(messages.c.id == message_id)
            ).first()
            if row is None:
                return None
            outs = conn.execute(
                sa.select(outcomes)
                .where(outcomes.c.message_id == message_id)
                .order_by(outcomes.c.id)
            ).all()
            patients = (
                conn.execute(
                    sa.select(message_patients.c.identifier)
                    .where(message_patients.c.message_id == message_id)
                    .order_by(message_patients.c.identifier)
                )
                .scalars()
                .all()
            )
        return StoredMessage(
            _summary(row),
            row.raw,
            [
                StoredOutcome(
                    o.id,
                    o.attempt,
                    o.stage,
                    o.state,
                    o.at,
                    o.duration_ms,
                    o.output,
                    orjson.loads(o.issues or "[]"),
                    bool(o.current),
                )
                for o in outs
            ],
            list(patients),
        )

    def raw(self, message_id: int) -> tuple[bytes | None, str, str | None] | None:
        """(raw bytes or None if pruned, format, sender) of a message; None if unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(messages.c.raw, messages.c.format, messages.c.sender).where(
                    messages.c.id == message_id
                )
            ).first()
        return None if row is None else (row.raw, row.format, row.sender)

    def current_issues(self, message_id: int, stage: str) -> list[dict[str, Any]]:
        """The issues (code, message, location, severity) of a message's current outcome
        of ``stage``; none when it has none."""
        with self.engine.connect() as conn:
            return _current_issues(conn, message_id, stage)

    def state_of(self, message_id: int) -> str | None:
        """A message's state; None when there is no such message."""
        with self.engine.connect() as conn:
            state = conn.execute(
                sa.select(messages.c.state).where(messages.c.id == message_id)
            ).scalar()
        return None if state is None else str(state)

    def find(
        self, where: MessageFilter | None = None, limit: int = 50, after: str | None = None
    ) -> Page:
        """One page of messages, newest first (keyset pagination: ``after`` is the
        cursor a previous page gave as ``next``)."""
        where = where or MessageFilter()
        limit = max(1, min(limit, 1000))
        m = messages.c
        key: Any = m.id
        query = sa.select(*_SUMMARY_COLUMNS)
        if where.patient:
            p = message_patients.c
            query = query.select_from(messages.join(message_patients, p.message_id == m.id))
            key = p.message_id
            column = p.identifier if "|" in where.patient else p.value
            query = query.where(column == where.patient)
        if where.state:
            query = query.where(m.state == where.state)
        if where.sender:
            query = query.where(m.sender == where.sender)
        if where.message_type:
            query = query.where(m.message_type == where.message_type)
        if where.control_id:
            query = query.where(m.control_id == where.control_id)
        if after:
            query = query.where(key < _cursor(after))
        query = query.order_by(key.desc()).limit(limit + 1)
        with self.engine.connect() as conn:
            if where.since is not None:
                # ids grow with time: the first id received since then bounds the scan,
                # so the (filter, id) indexes serve the query instead of a sort. Found
                # on the (received_at, id) index: min(id) would walk the primary key.
                first = conn.execute(
                    sa.select(m.id)
                    .where(m.received_at >= where.since)
                    .order_by(m.received_at, m.id)
                    .limit(1)
                ).scalar()
                if first is None:
                    return Page([], None)
                query = query.where(key >= int(first))
            rows = conn.execute(query).all()
        items = [_summary(r) for r in rows[:limit]]
        more = len(rows) > limit
        return Page(items, str(items[-1].id) if more and items else None)

    def pending(self, limit: int = 1000, state: str = "received") -> list[int]:
        """Ids of messages in ``state`` (oldest first): what a restarted listener still
        has to process."""
        with self.engine.connect() as conn:
            return [
                int(i)
                for i in conn.execute(
                    sa.select(messages.c.id)
                    .where(messages.c.state == state)
                    .order_by(messages.c.id)
                    .limit(limit)
                ).scalars()
            ]

    def ids(self, where: MessageFilter) -> Iterator[int]:
        """Every id matching ``where``, oldest first (for reprocessing in bulk)."""
        after: str | None = None
        found: list[int] = []
        while True:
            page = self.find(where, 1000, after)
            found += [s.id for s in page.items]
            if page.next is None:
                break
            after = page.next
        yield from reversed(found)

    def count(self, state: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(messages)
        if state:
            query = query.where(messages.c.state == state)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    # -- retention --------------------------------------------------------------------
    def prune(self, retention: Mapping[str, timedelta], now: datetime | None = None) -> int:
        """Drop the content (original bytes, outputs, DICOM instances) of messages past
        their state's retention, keeping a metadata stub with the issues. States in
        NEVER_PRUNED are never pruned, whatever ``retention`` says. Returns how many."""
        now = now or utcnow()
        m = messages.c
        total = 0
        with self._write() as conn:
            for state, keep in retention.items():
                if state in NEVER_PRUNED:
                    continue
                doomed = sa.select(m.id).where(
                    m.state == state, m.received_at < now - keep, m.pruned_at.is_(None)
                )
                ids = [int(i) for i in conn.execute(doomed).scalars()]
                for chunk in _chunks(ids, 500):
                    conn.execute(
                        outcomes.update()
                        .where(outcomes.c.message_id.in_(chunk))
                        .values(output=None)
                    )
                    conn.execute(
                        dicom_instances.delete().where(dicom_instances.c.message_id.in_(chunk))
                    )
                    conn.execute(
                        messages.update()
                        .where(m.id.in_(chunk))
                        .values(raw=None, pruned_at=now, updated_at=now)
                    )
                total += len(ids)
        return total

    # -- DICOM ------------------------------------------------------------------------
    def add_instance(self, instance: DicomInstance) -> bool:
        """Keep one received DICOM instance (durably: returns after the commit). False
        when the same instance (same SOP Instance UID and bytes) is already here; an
        instance sent again with other bytes replaces it and reopens its study."""
        d = dicom_instances.c
        sha = hashlib.sha256(instance.data).hexdigest()
        now = utcnow()
        with self._write() as conn:
            found = sa.select(d.id, d.sha256).where(d.sop_uid == instance.sop_uid)
            row = conn.execute(found).first()
            if row is not None and row.sha256 == sha:
                return False
            values = {
                "study_uid": instance.study_uid,
                "series_uid": instance.series_uid,
                "received_at": now,
                "channel": instance.channel,
                "peer": _clip(instance.peer, "peer"),  # a calling AE title may hold NUL
                "sender": _clip(instance.sender, "sender"),
                "data": instance.data,
                "sha256": sha,
                "message_id": None,
            }
            if row is None:
                conn.execute(dicom_instances.insert().values(sop_uid=instance.sop_uid, **values))
            else:
                conn.execute(dicom_instances.update().where(d.id == row.id).values(**values))
        return True

    def quiet_studies(self, quiet: timedelta, now: datetime | None = None) -> list[str]:
        """Studies with instances not yet committed and none received for ``quiet``:
        complete, by the quiet-period rule."""
        now = now or utcnow()
        d = dicom_instances.c
        query = (
            sa.select(d.study_uid)
            .where(d.message_id.is_(None))
            .group_by(d.study_uid)
            .having(sa.func.max(d.received_at) <= now - quiet)
            .order_by(sa.func.min(d.id))
        )
        with self.engine.connect() as conn:
            return [str(s) for s in conn.execute(query).scalars()]

    def study_instances(self, study_uid: str) -> list[tuple[str, bytes]]:
        """(name, Part 10 bytes) of every instance of a study, in a stable order."""
        d = dicom_instances.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d.series_uid, d.sop_uid, d.data)
                .where(d.study_uid == study_uid)
                .order_by(d.series_uid, d.sop_uid)
            ).all()
        return [(f"{r.series_uid}/{r.sop_uid}.dcm", r.data) for r in rows]

    def commit_study(self, study_uid: str, message_type: str | None = None) -> Receipt | None:
        """Take a study's instances (all of them, also those committed before) into one
        message (format dicom, control id the Study Instance UID, the raw bytes an
        uncompressed zip of the instances, which the DICOM reader reads as one study).
        None when the study has no pending instance. The same instances committed again
        are a duplicate; a study grown since is a new revision, flagged."""
        d = dicom_instances.c
        with self._write() as conn:
            rows = conn.execute(
                sa.select(
                    d.id,
                    d.sha256,
                    d.series_uid,
                    d.sop_uid,
                    d.data,
                    d.channel,
                    d.peer,
                    d.message_id,
                )
                .where(d.study_uid == study_uid)
                .order_by(d.series_uid, d.sop_uid)
            ).all()
            pending = [r for r in rows if r.message_id is None]
            if not pending:
                return None
            first = pending[0]
            raw = study_zip((f"{r.series_uid}/{r.sop_uid}.dcm", r.data) for r in rows)
            incoming = Incoming(
                raw,
                first.channel,
                "dicom",
                peer=first.peer,
                # none: the conversion learns the study's; an instance's sender is the
                # institution it authenticated as, for refuse_study only (a commit in its
                # name would be a revision of its refusal, or that refused row itself)
                sender=None,
                control_id=study_uid,
                message_type=message_type,
            )
            receipt = self._receive(conn, incoming)
            # Only the rows read, as read: an instance stored (or sent again with other
            # bytes) meanwhile by another process is not in this zip, so it stays
            # pending for the next commit instead of being marked taken and lost
            # (PostgreSQL lets it commit in between; SQLite's writer lock does not).
            read = {int(r.id): r.sha256 for r in rows}
            for ids in _chunks(sorted(read), 400):  # within any SQLite's variable limit
                conn.execute(
                    dicom_instances.update()
                    .where(sa.tuple_(d.id, d.sha256).in_([(i, read[i]) for i in ids]))
                    .values(message_id=receipt.id)
                )
            return receipt

    def refuse_study(
        self, incoming: Incoming, members: list[tuple[str, bytes]], pending_only: bool = False
    ) -> Receipt | None:
        """Keep a study refused for its sender (``incoming``: rejected, control id its
        Study UID, sender the institution that sent it) as one message of ``members``
        and of that sender's instances of the study still pending, which leave
        ``dicom_instances``: a study is converted whole or not at all, so what the same
        sender sent of it before is refused with it. Another sender's instances of the
        same Study UID stay (one who knows a UID cannot block its owner's study). None,
        nothing kept, when ``pending_only`` and that sender has none pending."""
        d = dicom_instances.c
        with self._write() as conn:
            mine = (d.study_uid == incoming.control_id) & d.message_id.is_(None)
            mine = mine & (d.sender == incoming.sender)
            rows = conn.execute(sa.select(d.id, d.series_uid, d.sop_uid, d.data).where(mine)).all()
            if pending_only and not rows:
                return None
            taken = {f"{r.series_uid}/{r.sop_uid}.dcm": r.data for r in rows}
            raw = study_zip(sorted({**taken, **dict(members)}.items()))
            receipt = self._receive(conn, replace(incoming, raw=raw))
            for ids in _chunks(sorted(int(r.id) for r in rows), 400):
                conn.execute(dicom_instances.delete().where(d.id.in_(ids)))
            return receipt

    def known_study(self, study_uid: str) -> KnownStudy | None:
        """The instances the listeners took of a study so far (kept through pruning);
        None when none is recorded (never committed, or committed before migration
        0010_dicom_known)."""
        k = dicom_known_studies.c
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(k.sop_uids, k.message_id).where(k.study_uid == study_uid)
            ).first()
        if row is None:
            return None
        message_id = None if row.message_id is None else int(row.message_id)
        return KnownStudy(study_uid, _unpack_uids(row.sop_uids), message_id)

    def remember_study(
        self,
        study_uid: str,
        sop_uids: Iterable[str],
        message_id: int,
        conn: Connection | None = None,
    ) -> None:
        """Add a committed message's SOP Instance UIDs to those known of its study (a
        union: nothing is forgotten). With ``conn``, inside that write transaction (the
        conversion outcome's, so both are kept or neither)."""
        if conn is None:
            with self._write() as own:
                self._remember_study(own, study_uid, sop_uids, message_id)
        else:
            self._remember_study(conn, study_uid, sop_uids, message_id)

    def _remember_study(
        self, conn: Connection, study_uid: str, sop_uids: Iterable[str], message_id: int
    ) -> None:
        k = dicom_known_studies.c
        now = utcnow()
        empty = {"study_uid": study_uid, "instance_count": 0, "sop_uids": _pack_uids(())}
        # The row first (if absent), then locked (PostgreSQL: another process adding to
        # the same study waits; SQLite's writer lock already orders them), then merged.
        conn.execute(
            conflict_insert(dicom_known_studies, self.dialect)
            .values(**empty, message_id=None, updated_at=now)
            .on_conflict_do_nothing(index_elements=["study_uid"])
        )
        stored = conn.execute(
            sa.select(k.sop_uids, k.message_id).where(k.study_uid == study_uid).with_for_update()
        ).one()
        known = _unpack_uids(stored.sop_uids) | set(sop_uids)
        # An older message reprocessed adds nothing newer: the newest stays named.
        newest = max(message_id, int(stored.message_id or 0))
        conn.execute(
            dicom_known_studies.update()
            .where(k.study_uid == study_uid)
            .values(
                instance_count=len(known),
                sop_uids=_pack_uids(known),
                message_id=newest,
                updated_at=now,
            )
        )


def _pack_uids(uids: Iterable[str]) -> bytes:
    # UIDs of one study share long prefixes: a few bytes each once compressed.
    return zlib.compress("\n".join(sorted(uids)).encode("utf-8"), 6)


def _unpack_uids(packed: bytes) -> frozenset[str]:
    text = zlib.decompress(packed).decode("utf-8")
    return frozenset(text.split("\n")) if text else frozenset()


def study_zip(members: Iterable[tuple[str, bytes]]) -> bytes:
    """An uncompressed zip of DICOM files with fixed member times: the same instances
    always make the same bytes (and SHA-256)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
    return out.getvalue()


# What a sender writes in a header field can be longer than its column (VARCHAR(n):
# PostgreSQL refuses the row, and the listener's "send it again later" would have the
# sender resend it for ever). The raw bytes keep every character; the columns a prefix.
_CLIPPED = ("peer", "auth_sender", "sender", "control_id", "message_type", "charset")
_LENGTH = {name: int(messages.c[name].type.length) for name in _CLIPPED}  # type: ignore[attr-defined]


def _clip(value: str | None, column: str) -> str | None:
    if value is None:
        return None
    # A header value is read from the message's bytes (kept whole, as evidence): a NUL
    # in it (MSH-10 of a refused message, a DICOM header) is shown as U+FFFD, since
    # PostgreSQL's text holds no NUL (the insert failed, with the rest of its batch).
    return value[: _LENGTH[column]].replace("\0", "\ufffd")


def _fit(item: Incoming) -> Incoming:
    """The message with its header values clipped to their columns, NUL-free."""
    long: dict[str, Any] = {
        name: _clip(value, name)
        for name in _CLIPPED
        if (value := getattr(item, name)) is not None
        and (len(value) > _LENGTH[name] or "\0" in value)
    }
    return replace(item, **long) if long else item


def _same(column: Any, value: str | None) -> Any:
    return column.is_(None) if value is None else column == value


def _cursor(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise StoreError(
            "bad-cursor",
            "not a page cursor (give the 'next' of a previous page)",
            location="after",
        ) from None


def _chunks(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start : start + size]


def _summary(row: Any) -> MessageSummary:
    return MessageSummary(
        id=int(row.id),
        received_at=row.received_at,
        channel=row.channel,
        peer=row.peer,
        auth_sender=row.auth_sender,
        sender=row.sender,
        control_id=row.control_id,
        message_type=row.message_type,
        format=row.format,
        charset=row.charset,
        sha256=row.sha256,
        size=int(row.size),
        state=row.state,
        revision=int(row.revision),
        flagged=bool(row.flagged),
        updated_at=row.updated_at,
        pruned_at=row.pruned_at,
    )
