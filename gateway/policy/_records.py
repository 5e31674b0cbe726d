"""What the policy keeps in the message store: consents, decisions (with the record
they decide, so that a held one can be decided again), and the yearly counters. The
tables are created by the store's migration ``v0002_policy``; messages move through
the store's state column: ``held``, ``outbox`` (released or allowed: ready for
delivery), ``denied``."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..audit import PSEUDONYM, AuditLog, decision_event, join_people, message_subject
from ..audit import events as audit_events
from ..errors import Issue
from ..store import StageOutcome, Store, metadata, stamp_after, utcnow
from ._consent import WITHDRAWN, ConsentRecord, PolicyError, parse_consent, stamped
from ._engine import Decision, Policy, RuleResult, new_individual, system_tag
from ._minimise import Change, pseudonym

_outbox = metadata.tables["outbox"]  # the delivery outbox (gateway/store/_schema.py)

__all__ = [
    "AUDIT_UNAVAILABLE",
    "INDIVIDUALS_JOINED",
    "KEPT_IN_OUTBOX",
    "STATE_OF",
    "PolicyRecords",
    "Released",
    "UnsentRows",
    "consents",
    "counters",
    "decisions",
    "kept_in_outbox",
    "register_unsent_rows",
]

# A decision's outcome → the message's state in the store.
STATE_OF = {"allow": "outbox", "allow-with-changes": "outbox", "hold": "held", "deny": "denied"}
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# The policy outcome of a record whose Bundle an outbox row keeps names it (a digest)
# instead of keeping ~35 KB a second time in the same transaction.
KEPT_IN_OUTBOX = "policy.kept-in-outbox"
# The note a decision's audit event carries when the record joined individuals counted
# apart (the count went down): how many it merged.
INDIVIDUALS_JOINED = "individuals-joined"
# A cross-border transfer whose decision the audit log could not record: not sent (held).
AUDIT_UNAVAILABLE = "policy.audit-unavailable"
# What the outbox path puts in a decision's transaction: (outbox row id, new row).
OutboxRow = tuple[int, bool]

consents = sa.Table(
    "policy_consents",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("consent_id", sa.String(128), nullable=False, unique=True),  # Consent.id
    sa.Column("patient_key", sa.String(64), nullable=False),  # keyed pseudonym of the patient
    sa.Column("status", sa.String(24), nullable=False),
    # the Consent as imported, with the id, meta.versionId and lastUpdated set here
    sa.Column("resource", sa.LargeBinary(), nullable=False),
    sa.Column("imported_at", sa.DateTime(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
)
sa.Index("ix_policy_consents_patient", consents.c.patient_key)

decisions = sa.Table(
    "policy_decisions",
    metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("message_id", ID, sa.ForeignKey("messages.id", ondelete="CASCADE")),
    sa.Column("decided_at", sa.DateTime(), nullable=False),
    sa.Column("sender", sa.String(64), nullable=False),
    sa.Column("recipient", sa.String(64), nullable=False),
    sa.Column("purpose", sa.String(32), nullable=False),
    sa.Column("outcome", sa.String(24), nullable=False),
    sa.Column("basis", sa.String(48)),
    sa.Column("agreement", sa.String(128)),
    sa.Column("rules", sa.Text(), nullable=False),  # JSON: each rule, outcome, reason
    sa.Column("changes", sa.Text(), nullable=False),  # JSON: paths and actions, no values
    sa.Column("patients", sa.Text(), nullable=False),  # JSON: pseudonyms of the patient
    sa.Column("input", sa.LargeBinary()),  # the Bundle decided (kept while held)
    sa.Column("current", sa.Boolean(), nullable=False),
    # Migration 0012. JSON: each Patient of the record by its pseudonyms, each tagged
    # with its identifier system (``tag:pseudonym``; one list per individual: the
    # transfer report counts people by them); NULL before it.
    sa.Column("people", sa.Text()),
    # JSON: the Consent.ids the transfer rests on (as its audit event names them).
    sa.Column("consents", sa.Text()),
)
sa.Index("ix_policy_decisions_message", decisions.c.message_id, decisions.c.id)
sa.Index("ix_policy_decisions_current", decisions.c.outcome, decisions.c.current)

counters = sa.Table(
    "policy_counters",
    metadata,
    sa.Column("year", sa.Integer(), primary_key=True),
    sa.Column("sender", sa.String(64), primary_key=True),
    sa.Column("basis", sa.String(48), primary_key=True),
    sa.Column("category", sa.String(32), primary_key=True),
    # One row per keyed pseudonym of a counted individual (each identifier of theirs),
    # tagged with its system (``tag:pseudonym``) since migration 0012, bare before.
    sa.Column("person", sa.String(64), primary_key=True),
    sa.Column("first_at", sa.DateTime(), nullable=False),
    # The individual the pseudonym belongs to (migration 0012): rows sharing it are one
    # person, counted once; older rows were each their own (the migration sets it so).
    # In the key: a pseudonym several people share (a placeholder HKID) is a row of
    # each individual holding it, whom a conflict kept apart.
    sa.Column("individual", sa.String(64), primary_key=True),
)
# An individual's rows under a counter's key (migration 0013): the counting reads and
# deletes them by individual, and counts individuals; the primary key, by pseudonym,
# made each of those a scan of the counter's whole key range.
sa.Index(
    "ix_policy_counters_individual",
    counters.c.year,
    counters.c.sender,
    counters.c.basis,
    counters.c.category,
    counters.c.individual,
)

# The statements of every decision, built once (building them with .values() per call
# cost several times their execution: bench/RESULTS.md, "Policy stage benchmark").
_d, _c = decisions.c, counters.c
_SUPERSEDE = decisions.update().where(_d.message_id == sa.bindparam("m"), _d.current.is_(True))
_ADD_DECISION = decisions.insert().returning(_d.id)
_KEY = sa.and_(
    _c.year == sa.bindparam("year"),
    _c.sender == sa.bindparam("sender"),
    _c.basis == sa.bindparam("basis"),
    _c.category == sa.bindparam("category"),
)
_COUNTED = sa.select(_c.person).where(_KEY, _c.person == sa.bindparam("person"))
# Individuals, not pseudonyms: an individual's identifiers are rows of one ``individual``.
_COUNT = sa.select(sa.func.count(sa.distinct(_c.individual))).where(_KEY)
# Every row of the individuals holding one of ``persons`` (the conflict check needs all
# their pseudonyms, not only those the record names).
_KNOWN = sa.select(_c.person, _c.individual, _c.first_at).where(
    _KEY,
    _c.individual.in_(
        sa.select(_c.individual).where(_KEY, _c.person.in_(sa.bindparam("persons", expanding=True)))
    ),
)
# The pseudonyms of ``persons`` two individuals of one counter hold (kept apart by a
# conflict: different people sharing an identifier), under the key's columns given as
# lists (each an index seek of the primary key, not a scan of the table).
_SHARED = (
    sa.select(_c.person)
    .where(
        _c.year.in_(sa.bindparam("years", expanding=True)),
        _c.sender == sa.bindparam("sender"),
        _c.basis.in_(sa.bindparam("bases", expanding=True)),
        _c.category.in_(sa.bindparam("categories", expanding=True)),
        _c.person.in_(sa.bindparam("persons", expanding=True)),
    )
    .group_by(_c.year, _c.sender, _c.basis, _c.category, _c.person)
    .having(sa.func.count() > 1)
)
# The same under any key (a Consent imported: rare, a scan is affordable there).
_SHARED_ANYWHERE = (
    sa.select(_c.person)
    .where(_c.person.in_(sa.bindparam("persons", expanding=True)))
    .group_by(_c.year, _c.sender, _c.basis, _c.category, _c.person)
    .having(sa.func.count() > 1)
)
# _KNOWN up to _FEW rows: the whole answer for a record whose pseudonyms few individuals
# hold; more, and only the individuals its sets may join are read (_joinable).
_FEW = 256
_KNOWN_CAPPED = _KNOWN.limit(_FEW + 1)
_ROWS_OF = sa.select(_c.person, _c.individual, _c.first_at).where(
    _KEY, _c.individual.in_(sa.bindparam("individuals", expanding=True))
)
_MERGED = counters.delete().where(_KEY, _c.individual.in_(sa.bindparam("merged", expanding=True)))
_ADD_COUNTED = counters.insert()
_CONSENTS_OF = sa.select(consents.c.resource).where(
    consents.c.patient_key.in_(sa.bindparam("keys", expanding=True))
)


@functools.lru_cache(maxsize=16)
def _sqlite_consents_of(n: int) -> str:
    """``_CONSENTS_OF`` for ``n`` keys on SQLite, as the driver takes it
    (PolicyRecords._sqlite_consents)."""
    marks = ", ".join("?" * n)
    return f"SELECT resource FROM policy_consents WHERE patient_key IN ({marks})"


@functools.lru_cache(maxsize=16)
def _sqlite_shared_sql(bases: int, categories: int, persons: int) -> str:
    """``_SHARED`` on SQLite, as the driver takes it (PolicyRecords._sqlite_shared)."""

    def marks(n: int) -> str:
        return ", ".join("?" * n)

    return (
        "SELECT person FROM policy_counters WHERE year IN (?, ?) AND sender = ? "
        f"AND basis IN ({marks(bases)}) AND category IN ({marks(categories)}) "
        f"AND person IN ({marks(persons)}) "
        "GROUP BY year, sender, basis, category, person HAVING count(*) > 1"
    )


# The decision's two statements on SQLite, as the driver takes them (_sqlite_add).
_DECISION_COLUMNS = tuple(c.name for c in decisions.columns if c.name != "id")
_SQLITE_SUPERSEDE = (
    "UPDATE policy_decisions SET current = 0, input = NULL WHERE message_id = ? AND current = 1"
)
_SQLITE_ADD_DECISION = "INSERT INTO policy_decisions ({}) VALUES ({})".format(
    ", ".join(_DECISION_COLUMNS), ", ".join("?" * len(_DECISION_COLUMNS))
)
# Held decisions ``release_held`` may release: not those whose hold an outbox row keeps
# (the outbound path's: ``Outbound.recheck_held`` releases them, deciding, filling the
# row and moving the message in one transaction; releasing them here too would record a
# second decision and set the message to ``outbox`` while its row stays held).
_HELD_BY_OUTBOX = (
    sa.select(_outbox.c.id)
    .where(
        _outbox.c.message_id == _d.message_id,
        _outbox.c.partner == _d.recipient,
        _outbox.c.state == "held",
        _outbox.c.last_error == "policy.held",
    )
    .exists()
)
_RELEASABLE = (
    sa.select(decisions)
    .where(_d.outcome == "hold", _d.current.is_(True), ~_HELD_BY_OUTBOX)
    .order_by(_d.id)
)


class UnsentRows(Protocol):
    """Holds, in the caller's transaction, the outbox rows of ``pairs`` (message id,
    recipient) not sent yet, with ``reason`` (``policy.held``): the delivery outbox's
    part of a consent withdrawal (gateway.delivery implements and registers it)."""

    def hold_unsent(self, conn: Connection, pairs: Sequence[tuple[int, str]], reason: str) -> int:
        """The number of rows held."""
        ...


# The factory gateway.delivery registers (register_unsent_rows): the later stage plugs
# into the earlier, so that the policy never imports delivery.
_unsent_factory: list[Callable[[Store], UnsentRows]] = []


def register_unsent_rows(factory: Callable[[Store], UnsentRows]) -> None:
    """Called by gateway.delivery when it is imported: how a withdrawal holds the
    queued transfers of its consent (the last registered wins)."""
    _unsent_factory[:] = [factory]


def unsent_rows(store: Store) -> UnsentRows | None:
    return _unsent_factory[0](store) if _unsent_factory else None


class _CreatedMeanwhile(Exception):
    """A Consent id not on file when read was inserted by another transaction before
    ours (the unique key refused our insert): ``import_consent`` imports it once more."""


@dataclass(frozen=True, slots=True)
class Released:
    message_id: int | None
    decision: Decision


class PolicyRecords:
    """Consents, decisions and counters over the message store's database; the
    ``Consents`` and ``Counters`` the engine reads."""

    def __init__(
        self,
        store: Store,
        policy: Policy,
        *,
        audit: bool = True,
        unsent: UnsentRows | None = None,
    ) -> None:
        """``unsent``: what holds the queued transfers of a withdrawn consent (None:
        the one gateway.delivery registered with :func:`register_unsent_rows`)."""
        self.store = store
        self.policy = policy
        self.unsent = unsent
        self.engine = store.engine
        self._writer = store.engine.execution_options(write=True)  # SQLite: BEGIN IMMEDIATE
        # The audit trail: each decision's AuditEvent joins the decision's transaction.
        self.audit = AuditLog(store) if audit else None
        # Consents as read (the R4 model's check is most of a decision's cost), by their
        # stored bytes: the rows are read every time (another process may import or
        # withdraw one), and a changed Consent is other bytes.
        self._parsed: dict[bytes, ConsentRecord] = {}
        self._keys: dict[str, str] = {}  # _patient_key
        self._shared: set[str] = set()  # tagged pseudonyms known shared (shared())
        self._sqlite = store.engine.dialect.name == "sqlite"
        # decided_at as SQLAlchemy's DateTime writes it on this dialect (_sqlite_add)
        stamp = decisions.c.decided_at.type.bind_processor(store.engine.dialect)
        self._stamp: Callable[[Any], Any] = stamp or (lambda value: value)

    # -- the engine's sources -------------------------------------------------------------
    def for_patients(self, patients: list[str]) -> list[ConsentRecord]:
        """The patient's Consents as stored now (read at every decision: another process
        may import or withdraw one)."""
        keys = [self._patient_key(p) for p in patients]
        if self._sqlite and keys:
            return [self._parse(r) for r in self._sqlite_consents(keys)]
        with self.engine.connect() as conn:
            rows = conn.execute(_CONSENTS_OF, {"keys": keys}).scalars().all()
        return [self._parse(r) for r in rows]

    def _sqlite_add(self, conn: Connection, message_id: int | None, row: dict[str, Any]) -> int:
        """``_SUPERSEDE`` and ``_ADD_DECISION`` on SQLite, straight through the driver
        in the caller's transaction (its connection, BEGIN IMMEDIATE already issued):
        the same rows — the time bound as SQLAlchemy binds it, its DateTime's text — for
        a fifth of the time (SQLAlchemy's execution was most of a decision's two
        statements)."""
        driver = conn.connection.driver_connection
        assert driver is not None
        if message_id is not None:
            driver.execute(_SQLITE_SUPERSEDE, (message_id,))
        values = dict(row, decided_at=self._stamp(row["decided_at"]), current=1)
        cursor = driver.execute(_SQLITE_ADD_DECISION, [values[c] for c in _DECISION_COLUMNS])
        return int(cursor.lastrowid)

    def _sqlite_consents(self, keys: list[str]) -> list[bytes]:
        """The read on SQLite, straight through the driver: one SELECT in autocommit mode
        is a consistent read by itself, and SQLAlchemy's execution around it (the
        BEGIN its event adds, the result's processing) cost 80 of a read's 90 µs."""
        sql = _sqlite_consents_of(len(keys))
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                return [bytes(row[0]) for row in cursor.execute(sql, keys).fetchall()]
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool

    def count(self, year: int, sender: str, basis: str, category: str) -> int:
        where = {"year": year, "sender": sender, "basis": basis, "category": category}
        with self.engine.connect() as conn:
            return int(conn.execute(_COUNT, where).scalar_one())

    def has(self, year: int, sender: str, basis: str, category: str, person: str) -> bool:
        where = {"year": year, "sender": sender, "basis": basis, "category": category}
        with self.engine.connect() as conn:
            return conn.execute(_COUNTED, {**where, "person": person}).first() is not None

    def shared(self, year: int, sender: str, persons: Sequence[str]) -> set[str]:
        """Which of ``persons`` two individuals of the sender's counters (this year and
        the one before) hold. A pseudonym found shared stays so (remembered: different
        people do not become one); one not found is asked again next time (another
        process may count)."""
        found = self._shared.intersection(persons)
        rest = [p for p in persons if p not in found]
        if not rest:
            return found
        data = self.policy.data
        categories = set(data.category_names) | {
            str((r.get("params") or {}).get("category", "sensitive"))
            for r in data.rules
            if r.get("kind") == "volume"
        }
        where = {
            "years": [year - 1, year],
            "sender": sender,
            "bases": sorted(data.bases),
            "categories": sorted(categories),
            "persons": rest,
        }
        if self._sqlite:
            new = set(self._sqlite_shared(where))
        else:
            with self.engine.connect() as conn:
                new = set(conn.execute(_SHARED, where).scalars())
        self._remember_shared(new)
        return found | new

    def _sqlite_shared(self, where: dict[str, Any]) -> list[str]:
        """``_SHARED`` on SQLite straight through the driver (asked at every decision a
        consent covers: SQLAlchemy's rendering of its lists cost most of the read)."""
        lists = (where["bases"], where["categories"], where["persons"])
        sql = _sqlite_shared_sql(*map(len, lists))
        args = [*where["years"], where["sender"], *lists[0], *lists[1], *lists[2]]
        raw = self.engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                return [str(row[0]) for row in cursor.execute(sql, args).fetchall()]
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool

    def _remember_shared(self, persons: set[str]) -> None:
        if len(self._shared) > 65536:  # a bound: one per shared identifier seen
            self._shared.clear()
        self._shared |= persons

    def joined(
        self, year: int, sender: str, basis: str, category: str, people: Sequence[Sequence[str]]
    ) -> int:
        where = {"year": year, "sender": sender, "basis": basis, "category": category}
        with self.engine.connect() as conn:
            known, _ = _known(conn, where, people)
        found = join_people(people, known)
        return sum(1 - len(joined) for _, joined in found)

    @staticmethod
    def _count_people(
        conn: Connection, where: dict[str, Any], people: Sequence[Sequence[str]]
    ) -> int:
        """Count the record's individuals (each a Patient's tagged pseudonyms) in the
        caller's transaction: a new person's pseudonyms as a new individual; those of a
        person counted already (by any of their identifiers) join theirs; a record
        naming two individuals counted apart as one person merges them — unless the
        joined individual would hold two different identifiers of one system (then
        they stay apart: gateway/audit/_transfers.py ``join_people``, which the report
        counts by too). The number of individuals counted apart it merged."""
        known, first = _known(conn, where, people)
        taken = set(known)  # and the ids given here (two Patients a conflict kept apart)
        merged = 0
        for fresh, joined in join_people(people, known):
            individual = joined[0] if joined else new_individual(fresh, taken)
            taken.add(individual)
            stamp = utcnow()
            add = {p: stamp for p in fresh}
            if len(joined) > 1:  # the others' rows become the first's
                held = known[individual]
                for other in joined[1:]:
                    for person in known[other] - held:
                        add[person] = min(first[(other, person)], add.get(person, stamp))
                conn.execute(_MERGED, {**where, "merged": joined[1:]})
                merged += len(joined) - 1
            for person, at in add.items():
                conn.execute(
                    _ADD_COUNTED,
                    {**where, "person": person, "individual": individual, "first_at": at},
                )
        return merged

    # -- consents -------------------------------------------------------------------------
    def _patient_key(self, patient: str) -> str:
        """The keyed pseudonym a patient's consents are stored under (an HMAC: kept, the
        key never changes)."""
        found = self._keys.get(patient)
        if found is None:
            if len(self._keys) > 65536:  # a bound: one per identifier seen
                self._keys.clear()
            found = self._keys[patient] = pseudonym(self.policy.key, *patient.split("|", 1))
        return found

    def _parse(self, resource: bytes) -> ConsentRecord:
        found = self._parsed.get(resource)
        if found is None:
            found = parse_consent(resource, self.policy.network, self.policy.data.purposes)
            if len(self._parsed) > 4096:  # a bound: one per consent in use
                self._parsed.clear()
            self._parsed[resource] = found
        return found

    def import_consent(
        self,
        body: bytes | dict[str, Any],
        now: datetime | None = None,
        operator: str | None = None,
        if_match: Sequence[str] | None = None,
    ) -> tuple[ConsentRecord, list[Released]]:
        """Keep a Consent (a new one, or a new version of one by id) and release the held
        records it now allows. ``operator``: who imported it (its audit event names them).
        The record returned is the version stored: its id, meta.versionId (1: it was
        new; else the stored version's plus one) and meta.lastUpdated set here
        (``stamped``). ``if_match``: the versions the caller expects on file (an HTTP
        If-Match's entity tags, ``*`` any): ``policy.consent-version-conflict`` when
        the stored one is none of them, or none is stored."""
        record = self._parse(body if isinstance(body, bytes) else orjson.dumps(body))
        try:
            stored = self._keep_consent(record, now, operator, if_match)
        except _CreatedMeanwhile:
            # Another import created this id between our read and our insert (PostgreSQL:
            # no row to lock yet; the unique key refused ours, nothing of it kept). Once
            # more, as FHIR's update of the version now on file: what the two make had
            # they come one after the other (and do on SQLite, whose BEGIN IMMEDIATE
            # orders them); If-Match and the rest checked again against it.
            stored = self._keep_consent(record, now, operator, if_match)
        return stored, self.release_held(now)

    def _keep_consent(
        self,
        record: ConsentRecord,
        now: datetime | None,
        operator: str | None,
        if_match: Sequence[str] | None,
    ) -> ConsentRecord:
        """``import_consent``'s transaction: the version stored; ``_CreatedMeanwhile``
        when the id, not on file when read, was inserted by another transaction."""
        with self._writer.begin() as conn:
            # locked (PostgreSQL; SQLite's BEGIN IMMEDIATE already orders writers): two
            # imports at once would both read version N and both store N+1 (and an
            # If-Match checked outside the lock would let both through)
            found = conn.execute(
                sa.select(consents.c.id, consents.c.resource, consents.c.updated_at)
                .where(consents.c.consent_id == record.id)
                .with_for_update()
            ).first()
            previous = None if found is None else self._parse(found.resource)
            stored = None if previous is None else previous.version
            _check_version(record.id, stored, if_match)
            self._refuse_shared(conn, record)
            version = 1 if stored is None else stored + 1
            # read under the lock, after the version it replaces (If-Modified-Since)
            stamp = stamp_after(utcnow(), None if found is None else found.updated_at)
            data = stamped(orjson.loads(record.resource), record.id, version, stamp)
            record = replace(record, resource=data)  # what it says is unchanged
            values = {
                "patient_key": self._patient_key(record.patient),
                "status": record.status,
                "resource": record.resource,
                "updated_at": stamp,
            }
            if found is None:
                try:
                    conn.execute(
                        consents.insert().values(consent_id=record.id, imported_at=stamp, **values)
                    )
                except sa.exc.IntegrityError as exc:  # the transaction is rolled back
                    raise _CreatedMeanwhile(record.id) from exc
            else:
                conn.execute(consents.update().where(consents.c.id == found.id).values(**values))
            self._audit_consent(conn, record, record.status, operator)
            if previous is not None:
                self._hold_taken(conn, previous, record, now or stamp)
        return record

    def _hold_taken(
        self, conn: Connection, previous: ConsentRecord, record: ConsentRecord, now: datetime
    ) -> None:
        """A new version that takes a permit of the one on file away (its status
        inactive, rejected or entered-in-error; a provision that now denies; a period
        ended or not begun; another patient; a recipient or purpose gone) is a
        withdrawal by update: the transfers queued on what it took away are held for
        the policy as :meth:`withdraw` holds them (the same hold, in the import's
        transaction; its audit event the import's), else they would cross on a consent
        no longer given. What it still permits is left queued."""
        if not (previous.permit and previous.status == "active"):
            return  # it permitted nothing: no transfer was decided on it
        if record.status in WITHDRAWN:
            why = _withdrawn_reason(record.id)
        else:
            why = (
                f"policy.held: consent {record.id} changed before it was sent (version "
                f"{record.version}: {_taken(previous, record, now)})"
            )

        def kept(recipient: str, purpose: str) -> bool:
            return record.covers([previous.patient], purpose, recipient, now)

        self._hold_unsent(conn, previous, why, kept, "the new version is not kept")

    def _refuse_shared(self, conn: Connection, record: ConsentRecord) -> None:
        """A permitting Consent under an identifier the counters know several different
        people share (two individuals counted apart hold it: a placeholder HKID) is
        refused (``policy.consent-ambiguous-patient``): it would name none of them, and
        the decisions would never rely on it (rule_consent) — refused at the door, the
        sender learns why and sends it under an identifier of the patient's own. A
        withdrawal or refusal (not active, or deny) is always kept."""
        if not (record.permit and record.status == "active"):
            return
        system = record.patient.split("|", 1)[0]
        tagged = f"{system_tag(system)}:{self._patient_key(record.patient)}"
        if tagged not in self._shared:
            found = set(conn.execute(_SHARED_ANYWHERE, {"persons": [tagged]}).scalars())
            self._remember_shared(found)
            if not found:
                return
        raise PolicyError(
            "consent-ambiguous-patient",
            f"Consent {record.id}: its patient identifier of {system} is shared by several "
            "different people (counted transfers hold it for individuals who cannot be one "
            "person: a placeholder): a consent under it names none of them and is not "
            "kept; send it under an identifier of the patient's own (an MRN, a resident ID)",
            location="Consent.patient.identifier",
        )

    def read_consent(self, consent_id: str) -> ConsentRecord:
        """The Consent on file under ``consent_id``, its current version (the only one
        kept: an import or withdrawal replaces the row); ``policy.consent-not-found``."""
        with self.engine.connect() as conn:
            found = conn.execute(
                sa.select(consents.c.resource).where(consents.c.consent_id == consent_id)
            ).scalar()
        if found is None:
            raise _no_consent(consent_id)
        return self._parse(found)

    def list_consents(self, patient: str | None = None) -> list[ConsentRecord]:
        query = sa.select(consents.c.resource).order_by(consents.c.id)
        if patient:
            query = query.where(consents.c.patient_key == self._patient_key(patient))
        with self.engine.connect() as conn:
            return [self._parse(r) for r in conn.execute(query).scalars()]

    def _audit_consent(
        self, conn: Connection, record: ConsentRecord, status: str, operator: str | None
    ) -> None:
        """The consent change's AuditEvent, in its transaction; the patient by the
        pseudonym the decisions name them with (no identifier in the log)."""
        if self.audit is not None:
            patient = f"{PSEUDONYM}|{self._patient_key(record.patient)}"
            event = audit_events.consent_changed(patient, record.id, status, operator=operator)
            self.audit.record_guarded(conn, event)

    def withdraw(
        self, consent_id: str, operator: str | None = None, if_match: Sequence[str] | None = None
    ) -> ConsentRecord:
        """Withdrawal: the Consent's status becomes inactive (kept, as evidence): a new
        version. One withdrawn already (its status inactive, rejected or
        entered-in-error: in force for nothing) is answered as it is: no new version,
        no audit event — a repeated withdrawal (a client's retry) changes nothing.
        ``if_match``: as :meth:`import_consent`'s, checked first."""
        with self._writer.begin() as conn:
            row = conn.execute(
                sa.select(consents.c.id, consents.c.resource, consents.c.updated_at)
                .where(consents.c.consent_id == consent_id)
                .with_for_update()  # the version it makes follows the stored one (import)
            ).first()
            if row is None:
                if if_match is not None:  # RFC 9110 13.1.1: no current representation
                    _check_version(consent_id, None, if_match)
                raise _no_consent(consent_id)
            current = self._parse(row.resource)
            _check_version(consent_id, current.version, if_match)
            if current.status in WITHDRAWN:
                return current
            resource = orjson.loads(row.resource)
            resource["status"] = "inactive"
            # a new version, as an update of the Consent would be: after the one on file
            stamp = stamp_after(utcnow(), row.updated_at)
            version = current.version + 1
            data = stamped(resource, consent_id, version, stamp)
            conn.execute(
                consents.update()
                .where(consents.c.id == row.id)
                .values(status="inactive", resource=data, updated_at=stamp)
            )
            withdrawn = self._parse(data)
            self._audit_consent(conn, withdrawn, "inactive", operator)
            self._hold_unsent(conn, withdrawn, _withdrawn_reason(withdrawn.id))
        return withdrawn

    def _hold_unsent(
        self,
        conn: Connection,
        withdrawn: ConsentRecord,
        reason: str,
        kept: Callable[[str, str], bool] | None = None,
        not_kept: str = "the withdrawal is not recorded",
    ) -> None:
        """The transfers queued on a decision this consent could have allowed (its
        patient, one of its recipients and purposes; those ``kept(recipient, purpose)``
        says a new version still permits are left) go back to ``held`` if not sent
        yet, in the withdrawal's transaction. Which they are is the policy's to say (its
        decisions); holding their outbox rows is delivery's (:class:`UnsentRows`, which
        gateway.delivery registers): the policy, an earlier stage, imports nothing of
        it. No holder while such transfers exist: the withdrawal is refused
        (``policy.unsent-not-held``) rather than leave them to cross."""
        key = self._patient_key(withdrawn.patient)
        found = conn.execute(
            sa.select(_d.message_id, _d.recipient, _d.purpose, _d.patients).where(
                _d.current.is_(True),
                _d.outcome.in_(("allow", "allow-with-changes")),
                _d.message_id.is_not(None),
                _d.recipient.in_(sorted(withdrawn.recipients)),
                _d.purpose.in_(sorted(withdrawn.purposes)),
            )
        ).all()
        pairs = [
            (r.message_id, r.recipient)
            for r in found
            if key in orjson.loads(r.patients) and not (kept and kept(r.recipient, r.purpose))
        ]
        if not pairs:
            return
        holder = self.unsent or unsent_rows(self.store)
        if holder is None:
            raise PolicyError(
                "unsent-not-held",
                f"consent {withdrawn.id}: {len(pairs)} transfer(s) queued on it could not be "
                "held: no delivery outbox is loaded in this process (gateway.delivery); "
                + not_kept,
                location="Consent.status",
            )
        holder.hold_unsent(conn, pairs, reason)

    # -- decisions ------------------------------------------------------------------------
    def apply(
        self,
        message_id: int | None,
        bundle: bytes | dict[str, Any],
        sender: str,
        recipient: str,
        purpose: str | None = None,
        now: datetime | None = None,
        text: bytes | None = None,
    ) -> Decision:
        """THE policy stage: decide, keep the decision with the record, count the
        individual when the record goes, and move the message to outbox, held or
        denied (with the minimised Bundle as the stage's output). ``bundle`` may be the
        converter's (``Record.mapped``, only read) with ``text`` its JSON
        (``Record.bundle_json``): then nothing is parsed or serialised again."""
        decision = self.decide(bundle, sender, recipient, purpose, now=now, text=text)
        if isinstance(bundle, bytes):
            raw = bundle
        else:
            raw = text if text is not None else orjson.dumps(bundle)
        self.record(message_id, decision, raw)
        return decision

    def decide(
        self,
        bundle: bytes | dict[str, Any],
        sender: str,
        recipient: str,
        purpose: str | None = None,
        now: datetime | None = None,
        text: bytes | None = None,
    ) -> Decision:
        """The decision alone, over the kept consents and counters: nothing recorded
        (:meth:`record` keeps it, with what it leads to)."""
        return self.policy.decide(
            bundle, sender, recipient, purpose, consents=self, counters=self, now=now, text=text
        )

    def record(
        self,
        message_id: int | None,
        decision: Decision,
        raw: bytes,
        then: Callable[[Connection], OutboxRow] | None = None,
        *,
        replaces: Sequence[int] = (),
        keep_input: bool = True,
    ) -> OutboxRow | None:
        """Keep the decision (and the counted individual, its audit event), move the
        message to its state and run ``then(conn)`` (the outbox row the decision leads
        to, or the held row it fills: gateway/delivery/_outbound.py) in ONE transaction:
        one commit (an fsync on SQLite, the stage's largest cost as wired:
        bench/RESULTS.md), and never a decision kept without the message's state or its
        outbox row, or the reverse. ``raw``: the Bundle decided (kept while held).

        The message's ``policy`` outcome keeps the Bundle that leaves only when nothing
        else does (no ``then``: ``apply``, ``release_held``); when ``then`` queues it,
        the outbox row keeps it (as the partner gets it) and the outcome names it by
        its SHA-256 (:func:`kept_in_outbox`). Returns what ``then`` returns.

        Its audit event is appended in the same transaction, guarded (a failed append
        never fails a domestic record). A cross-border transfer the decision allows is
        not kept when its event cannot be: ``policy.audit-unavailable`` is raised and the
        transaction rolled back (nothing queued); the caller holds the record and
        decides it again later (docs/policy.md, "Audited or not sent").

        A decision of no message (a referral's status: gateway/delivery/_status.py)
        supersedes nothing by itself: ``replaces`` names the earlier decisions of the
        same transfer it supersedes (no longer current: the transfer report counts one
        record per transfer, not one per decision). ``keep_input`` False: a hold is
        kept without the Bundle decided, so :meth:`release_held` (the records' rules,
        after a consent arrives) never decides it; its outbox row is decided again
        by its own rules when a person releases it."""
        with self._writer.begin() as conn:
            audited = self._keep(conn, message_id, decision, raw, keep_input)  # sets decision.id
            if replaces:
                conn.execute(
                    decisions.update()
                    .where(
                        _d.id.in_(list(replaces)),
                        _d.id != decision.id,
                        _d.message_id.is_(None),
                        _d.recipient == decision.recipient,
                    )
                    .values(current=False, input=None)
                )
            if not audited and decision.cross_border and decision.allowed:
                # Fail closed: a transfer across the boundary never goes on a decision
                # the audit log does not hold. Raised inside the transaction: nothing
                # of it is kept (decision, counter, outcome, outbox row).
                raise audit_unavailable(decision, message_id)
            if message_id is not None:
                self.store.record_outcome(
                    message_id, self._outcome(decision, queued=then is not None), conn=conn
                )
            return then(conn) if then is not None else None

    @staticmethod
    def _outcome(decision: Decision, queued: bool) -> StageOutcome:
        """The message's ``policy`` outcome: the decision's issues, and the Bundle that
        leaves (or, ``queued``, the reference to the outbox row that keeps it)."""
        issues = tuple(decision.issues())
        output = decision.bundle_json
        if queued and output is not None:
            issues += (kept_in_outbox(decision, output),)
            output = None
        return StageOutcome("policy", STATE_OF[decision.outcome], output=output, issues=issues)

    def _keep(
        self,
        conn: Connection,
        message_id: int | None,
        decision: Decision,
        raw: bytes,
        keep_input: bool = True,
    ) -> bool:
        """The decision's rows, in the caller's transaction; False when its audit event
        could not be appended (the audit's SAVEPOINT rolled back, logged)."""
        row = {
            "message_id": message_id,
            "decided_at": decision.decided_at,
            "sender": decision.sender,
            "recipient": decision.recipient,
            "purpose": decision.purpose,
            "outcome": decision.outcome,
            "basis": decision.basis,
            "agreement": decision.agreement,
            "rules": orjson.dumps([r.to_json() for r in decision.results]).decode(),
            "changes": orjson.dumps([c.to_json() for c in decision.changes]).decode(),
            "patients": orjson.dumps(decision.patients).decode(),
            "input": raw if decision.outcome == "hold" and keep_input else None,
            "current": True,
            "people": orjson.dumps(decision.people).decode(),
            "consents": orjson.dumps(decision.consents).decode(),
        }
        if self._sqlite:
            decision.id = self._sqlite_add(conn, message_id, row)
        else:
            if message_id is not None:
                conn.execute(_SUPERSEDE, {"m": message_id, "current": False, "input": None})
            decision.id = int(conn.execute(_ADD_DECISION, row).scalar_one())
        decision.message_id = message_id
        if decision.allowed and decision.counts:
            year, sender, basis, category, _ = decision.counts[0]
            where = {"year": year, "sender": sender, "basis": basis, "category": category}
            # Every counted individual's pseudonyms (decision.people holds them all,
            # tagged with their systems; the counts name each by a bare pseudonym).
            counted = {c[4] for c in decision.counts}
            people = [p for p in decision.people if counted.intersection(map(_bare, p))]
            people += [[c] for c in counted.difference(*(map(_bare, p) for p in people))]
            merged = self._count_people(conn, where, people)
            if merged:  # for the data-protection officer: the audit event says so
                decision.notes.append((INDIVIDUALS_JOINED, str(merged)))
        if self.audit is not None:
            event = decision_event(decision, message_subject(message_id))
            return self.audit.record_guarded(conn, event)
        return True

    def release_held(self, now: datetime | None = None) -> list[Released]:
        """Decide every record held by ``apply`` again (after a consent arrived); those
        no longer held leave the held state (outbox, or denied if a rule now refuses).
        Records the outbound path holds in an outbox row are left to it
        (``Outbound.recheck_held``): one decision per release, and the message's state
        never apart from its row's."""
        with self.engine.connect() as conn:
            rows = conn.execute(_RELEASABLE).all()
        released = []
        for row in rows:
            if row.input is None or _status_hold(row.rules):
                continue
            decision = self.policy.decide(
                row.input,
                row.sender,
                row.recipient,
                row.purpose,
                consents=self,
                counters=self,
                now=now,
            )
            if decision.outcome == "hold":
                continue
            if row.message_id is None:  # no message to move: close the old decision
                with self._writer.begin() as conn:
                    conn.execute(
                        decisions.update().where(decisions.c.id == row.id).values(current=False)
                    )
            try:
                self.record(row.message_id, decision, row.input)
            except PolicyError as exc:
                if exc.code != AUDIT_UNAVAILABLE:
                    raise
                continue  # still held (its decision unchanged): released at the next call
            released.append(Released(row.message_id, decision))
        return released

    def get(self, decision_id: int) -> Decision:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(decisions).where(decisions.c.id == decision_id)).first()
        if row is None:
            raise PolicyError(
                "decision-not-found", f"no policy decision {decision_id}", location="decision"
            )
        return _decision(row)

    def find(
        self, message_id: int | None = None, outcome: str | None = None, limit: int = 50
    ) -> list[Decision]:
        query = sa.select(decisions).order_by(decisions.c.id.desc()).limit(max(1, min(limit, 1000)))
        if message_id is not None:
            query = query.where(decisions.c.message_id == message_id)
        if outcome:
            query = query.where(decisions.c.outcome == outcome, decisions.c.current.is_(True))
        with self.engine.connect() as conn:
            return [_decision(r) for r in conn.execute(query).all()]


def _status_hold(rules: str) -> bool:
    """Whether a hold is a referral status's (status_rules: ``return-to-issuer``, or
    none written): never the records' rules' to decide again (its outbox row is
    released by a person, deciding by status_rules). Kept before those holds were
    kept without their input."""
    return any(r.get("kind") in ("return-to-issuer", "status") for r in orjson.loads(rules))


def _decision(row: Any) -> Decision:
    results = [
        RuleResult(r["rule"], r["kind"], r["outcome"], r["reason_code"], r["reason"])
        for r in orjson.loads(row.rules)
    ]
    changes = [Change(c["path"], c["action"], c.get("kind", "")) for c in orjson.loads(row.changes)]
    return Decision(
        outcome=row.outcome,
        sender=row.sender,
        recipient=row.recipient,
        purpose=row.purpose,
        decided_at=row.decided_at,
        results=results,
        basis=row.basis,
        agreement=row.agreement,
        changes=changes,
        patients=orjson.loads(row.patients),
        people=orjson.loads(row.people) if row.people is not None else [],
        consents=orjson.loads(row.consents) if row.consents is not None else [],
        id=int(row.id),
        message_id=row.message_id,
    )


def _known(
    conn: Connection, where: dict[str, Any], people: Sequence[Sequence[str]]
) -> tuple[dict[str, set[str]], dict[tuple[str, str], datetime]]:
    """The individuals counted already under ``where`` that hold a pseudonym of
    ``people`` (tagged, or bare as rows older than migration 0012 keep it), each to all
    its stored pseudonyms; and when each of those was first counted.

    When many individuals hold one (a placeholder HKID thousands share), only those a
    record's set may join are read (:func:`_joinable`): reading them all made each
    decision cost as much as the sharers, the year's counting their square."""
    persons = sorted({x for group in people for p in group for x in (p, _bare(p))})
    if not persons:
        return {}, {}
    rows = conn.execute(_KNOWN_CAPPED, {**where, "persons": persons}).all()
    if len(rows) > _FEW and all(":" in p for group in people for p in group):
        joinable = _joinable(conn, where, people, persons)
        # An untagged row (kept before migration 0012) among them: its system is not
        # known, the filter's reason does not hold: every holder is read, as before.
        if joinable is not None:
            rows = joinable
        else:
            rows = conn.execute(_KNOWN, {**where, "persons": persons}).all()
    known: dict[str, set[str]] = {}
    first: dict[tuple[str, str], datetime] = {}
    for r in rows:
        known.setdefault(r.individual, set()).add(r.person)
        first[(r.individual, r.person)] = r.first_at
    return known, first


def _joinable(
    conn: Connection, where: dict[str, Any], people: Sequence[Sequence[str]], persons: list[str]
) -> Sequence[Any] | None:
    """The rows of the individuals holding one of ``persons`` that a set of ``people``
    (tagged, each) may join, and of any whose id is one of ``persons`` (new_individual
    must not take it): not the others, which conflict with it whatever it joins first.

    Why: an individual holding a value of a system a set holds too, but none of the
    values of that system the set — or any individual it may join — holds, has a value
    only it holds against one only the set holds, of one system: it is never joined
    (gateway/audit/_transfers.py ``_conflict``). So the database keeps an individual
    when, for one set, each system of the set it holds a value of, it holds one of the
    values known so far of that system (the record's, then those of the individuals
    kept, until none is added), it is kept — and so is one holding one of ``persons``
    untagged; an untagged row among those kept (a system not known): None, and every
    holder is read. ``join_people`` then decides over them exactly
    as over all. (A pseudonym is of one system: an HMAC of the system and the value.)"""
    values: dict[str, set[str]] = {}
    for group in people:
        for item in group:
            values.setdefault(item.partition(":")[0], set()).add(item)
    found: dict[str, None] = {}
    rows: list[Any] = []
    while True:
        query = _joinable_ids(persons, people, values, conn.dialect.name)
        ids = list(conn.execute(query, where).scalars())
        fresh = [i for i in ids if i not in found]
        if not fresh:
            return rows
        found.update(dict.fromkeys(fresh))
        added = conn.execute(_ROWS_OF, {**where, "individuals": fresh}).all()
        if any(":" not in r.person for r in added):
            return None  # a system not known (an untagged row): _known reads them all
        rows += added
        grown = False
        for r in added:
            tag = r.person.partition(":")[0]
            if tag in values and r.person not in values[tag]:
                values[tag].add(r.person)
                grown = True
        if not grown:  # the same question would get the same answer
            return rows


def _joinable_ids(
    persons: list[str], people: Sequence[Sequence[str]], values: dict[str, set[str]], dialect: str
) -> Any:
    """The ids :func:`_joinable` keeps, as set operations over ranges of the primary key
    (no scan of the key's rows, no grouping): the holders of ``persons``, less, for one
    set at a time, those holding a value of one of its systems (a range of the key: the
    tag) that is none of ``values`` while holding none of them (tagged or bare); with
    those whose id is one of ``persons`` and those holding an untagged row of them."""

    def ids(*where: Any) -> Any:
        return sa.select(_c.individual).where(_KEY, *where)

    # The tag's range (``tag:`` up to ``tag;``) holds its rows in byte order only: under
    # a PostgreSQL database's ICU or glibc collation (en-US: ``;`` sorts before ``:``, or
    # punctuation is ignored) it misses them and the filter silently keeps every holder.
    # SQLite compares bytes already (and knows no collation "C").
    person = _c.person.collate("C") if dialect == "postgresql" else _c.person

    holders = ids(_c.person.in_(persons))
    kept = [
        ids(_c.person.in_(persons), _c.person == _c.individual),
        ids(_c.person.in_(persons), ~_c.person.contains(":")),
    ]
    for group in people:
        out: list[Any] = []
        for tag in sorted({i.partition(":")[0] for i in group}):
            known = sorted(values[tag])
            other = ids(person >= f"{tag}:", person < f"{tag};", _c.person.not_in(known))
            holding = ids(_c.person.in_(known + [_bare(v) for v in known]))
            out.append(
                sa.select(sa.literal_column("individual")).select_from(
                    sa.except_(other, holding).subquery()
                )
            )
        kept.append(
            sa.select(sa.literal_column("individual")).select_from(
                sa.except_(holders, *out).subquery()
            )
        )
    return sa.union(*kept)


def _bare(item: str) -> str:
    """A stored pseudonym without its system's tag (``tag:pseudonym``; bare before
    migration 0012): the form the decision's counts and audit events use."""
    return item.partition(":")[2] or item


def _no_consent(consent_id: str) -> PolicyError:
    return PolicyError("consent-not-found", f"no consent {consent_id!r}", location="Consent.id")


def _check_version(consent_id: str, stored: int | None, if_match: Sequence[str] | None) -> None:
    """FHIR's version-aware update (http.html#concurrency): the caller's If-Match
    (``if_match``, its entity tags' versions; ``*`` any) names the version on file;
    else ``policy.consent-version-conflict`` (412), nothing changed. None: no
    precondition."""
    if if_match is None:
        return
    if stored is not None and ("*" in if_match or str(stored) in if_match):
        return
    on_file = f"version {stored} is on file" if stored is not None else "none is on file"
    raise PolicyError(
        "consent-version-conflict",
        f"Consent/{consent_id}: If-Match names another version than the current one "
        f"({on_file}); nothing was changed: read it again (GET /Consent/{consent_id}) "
        "and retry with its ETag",
        location="If-Match",
    )


def audit_unavailable(decision: Decision, message_id: int | None) -> PolicyError:
    """The error that stops a cross-border transfer whose decision the audit log could
    not record (``policy.audit-unavailable``): no patient data, the parties by key."""
    where = f"message {message_id}" if message_id is not None else "the record"
    return PolicyError(
        AUDIT_UNAVAILABLE,
        f"{where}: the cross-border transfer {decision.sender} → {decision.recipient} "
        f"({decision.outcome}) is not sent: its decision could not be recorded in the audit "
        "log (see the gateway log: audit.write-failed); held and decided again when the "
        "audit log is writable",
        location="audit",
    )


def kept_in_outbox(decision: Decision, output: bytes) -> Issue:
    """The policy outcome's reference to the Bundle that left: its SHA-256 and the
    outbox row that keeps it (the one this decision queued or filled for the recipient;
    its first event names the decision), instead of a second copy in the outcome."""
    digest = hashlib.sha256(output).hexdigest()
    return Issue(
        KEPT_IN_OUTBOX,
        f"the Bundle this decision let go (sha256 {digest}) is kept in the outbox row "
        f"queued for {decision.recipient} under policy decision {decision.id}, as the "
        "partner gets it (report variant, signature): not again in this outcome",
        location="outbox",
        severity="information",
    )


def _withdrawn_reason(consent_id: str) -> str:
    """The hold reason of a transfer whose consent was withdrawn (by ``$withdraw`` or by
    an update to an inactive status): one wording, which operators and tests search for."""
    return f"policy.held: consent {consent_id} withdrawn before it was sent"


def _taken(previous: ConsentRecord, record: ConsentRecord, now: datetime) -> str:
    """What a new version of a permitting Consent took away, in words (an outbox
    row's hold names it; no patient data)."""
    if record.status != "active":
        return f"its status is {record.status}"
    if not record.permit:
        return "its provision denies"
    if record.patient != previous.patient:
        return "it names another patient"
    if not record.in_force(now):
        start = record.start.isoformat() if record.start else "open"
        end = record.end.isoformat() if record.end else "open"
        return f"its period {start} to {end} is not in force"
    return "a recipient or purpose is no longer in it"
