"""The audit log: an append-only table of canonical AuditEvents forming an RFC 9162
Merkle tree, and its signed tree heads.

Appending is one transaction: the state row (size and frontier) is locked (``FOR
UPDATE`` on PostgreSQL; SQLite's write transactions are already serial, BEGIN
IMMEDIATE), the entry takes the index ``size``, the frontier absorbs its leaf hash in
O(log n) and gives the new root, stored beside the entry. Nothing is ever recomputed
from the whole tree on append.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import queue
import threading
import time
import uuid
from base64 import b64decode, b64encode
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import GatewayError
from ..signing import Signer, canonicalize, sign_detached, verify_detached
from ..store import Store, utcnow
from ._events import keys_of
from ._merkle import Frontier, Tree, leaf_hash
from ._tables import entries, heads, state

__all__ = [
    "LOG_ID",
    "Appended",
    "AuditError",
    "AuditLog",
    "AuditWriter",
    "Entry",
    "SignedHead",
    "head_payload",
]

LOG_ID = "https://fhir-gateway.example.org/audit-log"
_LOG = logging.getLogger("gateway.audit")
HEAD_ROLE = "verification"  # the JWS commitment of a tree head (FHIR signature-type)


class AuditError(GatewayError):
    """The audit log cannot do what was asked, or found itself tampered with."""

    family = "audit"


@dataclass(frozen=True, slots=True)
class Appended:
    index: int
    event_id: str
    leaf_hash: bytes
    root: bytes  # the tree's root once this entry joined it


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    event_id: str
    recorded: dt.datetime
    kind: str
    patient: str | None
    partner: str | None
    canonical: bytes
    leaf_hash: bytes
    root: bytes

    def resource(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.canonical)
        return value


@dataclass(frozen=True, slots=True)
class SignedHead:
    id: int | None
    tree_size: int
    root_hash: bytes
    timestamp: int  # ms since the epoch
    jws: str

    def payload(self, log: str = LOG_ID) -> bytes:
        return head_payload(log, self.tree_size, self.root_hash, self.timestamp)

    def to_json(self) -> dict[str, Any]:
        return {
            "log": LOG_ID,
            "tree_size": self.tree_size,
            "root_hash": b64encode(self.root_hash).decode(),
            "timestamp": self.timestamp,
            "signature": self.jws,
        }


def head_payload(log: str, size: int, root: bytes, timestamp: int) -> bytes:
    """What a tree head's JWS signs: RFC 8785 JSON of the log, size, root, time."""
    return canonicalize(
        {
            "log": log,
            "tree_size": size,
            "root_hash": b64encode(root).decode(),
            "timestamp": timestamp,
        }
    )


def verify_head(head: SignedHead, log: str = LOG_ID) -> Any:
    """The JWS header (signer's chain, time) of a head whose signature holds."""
    return verify_detached(head.jws, head.payload(log))


def _recorded(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(
            "audit.bad-event", f"AuditEvent.recorded {text[:40]!r} is not an instant"
        ) from None
    if when.tzinfo is None:
        raise AuditError("audit.bad-event", "AuditEvent.recorded has no time zone")
    return when.astimezone(dt.UTC).replace(tzinfo=None)


def _prepare(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one event, but its index and root."""
    if resource.get("resourceType") != "AuditEvent":
        raise AuditError("audit.bad-event", "only AuditEvents are recorded in the audit log")
    event = dict(resource)
    event.setdefault("id", str(uuid.uuid4()))
    kind, recorded, patient, partner = keys_of(event)
    canonical = canonicalize(event)
    return {
        "event_id": str(event["id"]),
        "recorded": _recorded(recorded),
        "kind": kind[:32],
        "patient": patient[:255] if patient else None,
        "partner": partner[:64] if partner else None,
        "canonical": canonical,
        "leaf_hash": leaf_hash(canonical),
    }


def _kind(resource: Mapping[str, Any]) -> str:
    try:
        return keys_of(dict(resource))[0]
    except Exception:
        return "unknown"


def _frontier(blob: bytes, size: int) -> Frontier:
    return Frontier(size, tuple(blob[i : i + 32] for i in range(0, len(blob), 32)))


class AuditLog:
    """The audit log over the message store's database. Thread-safe; share one."""

    def __init__(self, store: Store, log: str = LOG_ID, *, defer: float | None = None) -> None:
        """``defer`` (seconds): ``record_guarded(None, ...)`` joins the next write
        transaction committed on the store instead of committing on its own, and commits
        on its own after ``defer`` seconds if none came (``_Deferred``)."""
        self.store = store
        self.log = log
        self.engine = store.engine
        self._writer = store.engine.execution_options(write=True)
        self._failures = 0  # events record_guarded could not append (logged)
        self._deferred = _Deferred.of(self.engine, defer) if defer is not None else None

    @property
    def failures(self) -> int:
        """Appends ``record_guarded`` could not make (each logged)."""
        return self._failures + (self._deferred.failures if self._deferred else 0)

    def flush(self) -> None:
        """Commit the events deferred on this store (``defer``) now: every read of the
        log does, so it sees what the stages appended."""
        _Deferred.flush_engine(self.engine)

    # -- appending ------------------------------------------------------------------------
    def record(self, resource: Mapping[str, Any]) -> Appended:
        """Append one AuditEvent; returns once it is committed."""
        return self.record_many([resource])[0]

    def record_many(self, resources: Iterable[Mapping[str, Any]]) -> list[Appended]:
        """Append several events in one transaction (one commit)."""
        rows = [_prepare(r) for r in resources]
        with self._writer.begin() as conn:
            return self.append_rows(conn, rows)

    def record_in(self, conn: Connection, *resources: Mapping[str, Any]) -> list[Appended]:
        """Append inside the caller's write transaction: the events commit (or not)
        with the change they record, at no commit of their own."""
        return self.append_rows(conn, [_prepare(r) for r in resources])

    def record_guarded(self, conn: Connection | None, *resources: Mapping[str, Any]) -> bool:
        """Append for a pipeline stage, which the audit must never fail: inside the
        caller's transaction (``conn``) under a SAVEPOINT, so a failed append undoes only
        itself; without ``conn``, joining the store's next write commit (a deferring
        log: ``_Deferred``) or in a transaction of its own. A failure is logged
        (``audit.write-failed``,
        the events' kinds and the error's type: no patient data) and counted in
        ``failures``, which the operator sees; False then."""
        try:
            rows = [_prepare(r) for r in resources]
            if conn is None and self._deferred is not None:
                self._deferred.add(rows)
            elif conn is None:
                with self._writer.begin() as own:
                    self.append_rows(own, rows)
            else:
                with _savepoint(conn):
                    self.append_rows(conn, rows)
            return True
        except Exception as exc:
            self._failures += 1
            _write_failed(len(resources), {str(_kind(r)) for r in resources}, exc)
            return False

    def writer(self, flush_every: float = 0.2, max_batch: int = 500) -> AuditWriter:
        """A background writer for a hot path: events queue and are appended together
        every ``flush_every`` seconds (one commit for many). ``close()`` flushes."""
        return AuditWriter(self, flush_every, max_batch)

    def append_rows(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Appended]:
        return _append_rows(conn, rows)

    # -- reading --------------------------------------------------------------------------
    def size(self) -> int:
        self.flush()
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(state.c.size)).scalar() or 0)

    def current(self) -> tuple[int, bytes]:
        """(size, root) as the appender keeps them."""
        self.flush()
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(state.c.size, state.c.frontier)).first()
        frontier = _frontier(found.frontier, found.size) if found else Frontier()
        return frontier.size, frontier.root()

    def leaf_hashes(self, size: int | None = None) -> list[bytes]:
        self.flush()
        query = sa.select(entries.c.leaf_hash).order_by(entries.c.idx)
        if size is not None:
            query = query.where(entries.c.idx < size)
        with self.engine.connect() as conn:
            return [bytes(h) for h in conn.execute(query).scalars()]

    def tree(self, size: int | None = None) -> Tree:
        return Tree(self.leaf_hashes(size))

    def rows(self, where: Any = None, chunk: int = 1000) -> Iterator[Entry]:
        """Entries in index order (all, or those ``where`` selects), read in chunks."""
        self.flush()
        last = -1
        while True:
            query = sa.select(entries).where(entries.c.idx > last).order_by(entries.c.idx)
            if where is not None:
                query = query.where(where)
            with self.engine.connect() as conn:
                batch = conn.execute(query.limit(chunk)).all()
            for row in batch:
                yield Entry(
                    row.idx,
                    row.event_id,
                    row.recorded,
                    row.kind,
                    row.patient,
                    row.partner,
                    bytes(row.canonical),
                    bytes(row.leaf_hash),
                    bytes(row.root),
                )
            if len(batch) < chunk:
                return
            last = batch[-1].idx

    # -- signed tree heads ----------------------------------------------------------------
    def sign_head(self, signer: Signer, when: dt.datetime | None = None) -> SignedHead:
        """Sign the current tree head with the gateway's key and keep it."""
        now = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        size, root = self.current()
        timestamp = int(now.timestamp() * 1000)
        jws = sign_detached(head_payload(self.log, size, root, timestamp), signer, HEAD_ROLE, now)
        with self._writer.begin() as conn:
            new_id = conn.execute(
                sa.insert(heads)
                .values(
                    tree_size=size,
                    root_hash=root,
                    timestamp=timestamp,
                    signed_at=utcnow(),
                    jws=jws,
                )
                .returning(heads.c.id)
            ).scalar_one()
        return SignedHead(int(new_id), size, root, timestamp, jws)

    def heads(self) -> list[SignedHead]:
        self.flush()
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(heads).order_by(heads.c.id)).all()
        return [SignedHead(r.id, r.tree_size, bytes(r.root_hash), r.timestamp, r.jws) for r in rows]

    def latest_head(self) -> SignedHead | None:
        found = self.heads()
        return found[-1] if found else None

    def sign_if_due(
        self, signer: Signer, every: dt.timedelta, now: dt.datetime | None = None
    ) -> SignedHead | None:
        """Periodic signing, for the serve loop: a new head when the log grew and the
        latest head is older than ``every`` (or there is none)."""
        now = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        latest = self.latest_head()
        size, _ = self.current()
        if latest is not None:
            age = now - dt.datetime.fromtimestamp(latest.timestamp / 1000, dt.UTC)
            if latest.tree_size == size or age < every:
                return None
        return self.sign_head(signer, now)


# The append's statements, built once: building (and cache-keying) Core constructs per
# append cost more CPU than running them.
_READ_STATE = sa.select(state.c.size, state.c.frontier).where(state.c.id == 1)
_LOCK_STATE = _READ_STATE.with_for_update()
_NEW_STATE = sa.insert(state).values(id=1, size=0, frontier=b"")
_INSERT = sa.insert(entries)
_UPDATE_STATE = (
    sa.update(state)
    .where(state.c.id == 1)
    .values(size=sa.bindparam("new_size"), frontier=sa.bindparam("new_frontier"))
)


# The state each database's appends last left, per database URL: an append that finds
# it unchanged (the swap below matches size and frontier) skips reading it. Another
# writer, or a rolled-back append, changed it: the swap matches nothing and the append
# reads the state as it is. The database's state row stays the only authority.
_last_state: dict[Any, tuple[int, bytes]] = {}
_SWAP_STATE = (
    sa.update(state)
    .where(
        state.c.id == 1,
        state.c.size == sa.bindparam("old_size"),
        state.c.frontier == sa.bindparam("old_frontier"),
    )
    .values(size=sa.bindparam("new_size"), frontier=sa.bindparam("new_frontier"))
)


def _absorb(
    frontier: Frontier, rows: Sequence[dict[str, Any]]
) -> tuple[Frontier, list[dict[str, Any]], list[Appended]]:
    """The rows' leaves joined to the tree: the new frontier, the entries, what each got."""
    done: list[Appended] = []
    values = []
    for row in rows:
        index = frontier.size
        frontier = frontier.append(row["leaf_hash"])
        root = frontier.root()
        values.append({**row, "idx": index, "root": root})
        done.append(Appended(index, row["event_id"], row["leaf_hash"], root))
    return frontier, values, done


def _append_rows(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Appended]:
    """Append prepared rows in ``conn``'s transaction: the state row locked (updated
    first: its row lock, or SQLite's write lock, orders concurrent appends), each entry
    its index and root, the frontier updated."""
    if not rows:
        return []
    if conn.dialect.name == "sqlite":
        return _append_sqlite(conn, rows)
    key = conn.engine.url
    last = _last_state.get(key)
    if last is not None:
        size, blob = last
        frontier, values, done = _absorb(_frontier(blob, size), rows)
        new_blob = b"".join(frontier.hashes)
        swapped = conn.execute(
            _SWAP_STATE,
            {"old_size": size, "old_frontier": blob, "new_size": frontier.size,
             "new_frontier": new_blob},
        )  # fmt: skip
        if swapped.rowcount == 1:
            conn.execute(_INSERT, values)
            _last_state[key] = (frontier.size, new_blob)
            return done
    found = conn.execute(_LOCK_STATE if conn.dialect.name == "postgresql" else _READ_STATE).first()
    if found is None:  # a fresh log: the row is made once, under the write lock
        conn.execute(_NEW_STATE)
        frontier = Frontier()
    else:
        frontier = _frontier(found.frontier, found.size)
    frontier, values, done = _absorb(frontier, rows)
    new_blob = b"".join(frontier.hashes)
    conn.execute(_UPDATE_STATE, {"new_size": frontier.size, "new_frontier": new_blob})
    conn.execute(_INSERT, values)
    _last_state[key] = (frontier.size, new_blob)
    return done


_COLUMNS = ("idx", "event_id", "recorded", "kind", "patient", "partner", "canonical",
            "leaf_hash", "root")  # fmt: skip
_SQLITE_INSERT = (
    f"INSERT INTO audit_entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
)


def _append_sqlite(conn: Connection, rows: Sequence[dict[str, Any]]) -> list[Appended]:
    """``_append_rows`` on SQLite through the driver's cursor, inside the same
    transaction (SQLite's write lock is held: appends are serial): the same statements
    without SQLAlchemy's per-statement work, which cost more than the statements. The
    instant is stored as SQLAlchemy stores it (its own bind processor)."""
    key = conn.engine.url
    cursor = conn.connection.cursor()
    try:
        last = _last_state.get(key)
        swapped = False
        if last is not None:
            size, blob = last
            frontier, values, done = _absorb(_frontier(blob, size), rows)
            new_blob = b"".join(frontier.hashes)
            cursor.execute(
                "UPDATE audit_state SET size = ?, frontier = ? "
                "WHERE id = 1 AND size = ? AND frontier = ?",
                (frontier.size, new_blob, size, blob),
            )
            swapped = cursor.rowcount == 1
        if not swapped:
            cursor.execute("SELECT size, frontier FROM audit_state WHERE id = 1")
            found = cursor.fetchone()
            if found is None:  # a fresh log: the row is made once, under the write lock
                cursor.execute(
                    "INSERT INTO audit_state (id, size, frontier) VALUES (1, 0, ?)", (b"",)
                )
                frontier = Frontier()
            else:
                frontier = _frontier(bytes(found[1]), int(found[0]))
            frontier, values, done = _absorb(frontier, rows)
            new_blob = b"".join(frontier.hashes)
            cursor.execute(
                "UPDATE audit_state SET size = ?, frontier = ? WHERE id = 1",
                (frontier.size, new_blob),
            )
        instant = _instant_processor(conn)
        cursor.executemany(
            _SQLITE_INSERT,
            [tuple(instant(v[c]) if c == "recorded" else v[c] for c in _COLUMNS) for v in values],
        )
    finally:
        cursor.close()
    _last_state[key] = (frontier.size, new_blob)
    return done


def _instant_processor(conn: Connection) -> Any:
    found = _PROCESSORS.get(conn.dialect.name)
    if found is None:
        recorded = entries.c.recorded.type.dialect_impl(conn.dialect)
        found = recorded.bind_processor(conn.dialect) or (lambda v: v)
        _PROCESSORS[conn.dialect.name] = found
    return found


_PROCESSORS: dict[str, Any] = {}


@contextmanager
def _savepoint(conn: Connection) -> Iterator[None]:
    """A SAVEPOINT around an append inside someone else's transaction: a failed append
    undoes itself only. On SQLite through the driver (SQLAlchemy's nested transaction
    costs two statements' worth of its own work per append); released or rolled back
    before this returns, so SQLAlchemy's view of the transaction never changes."""
    if conn.dialect.name != "sqlite":
        with conn.begin_nested():
            yield
        return
    cursor = conn.connection.cursor()
    try:
        cursor.execute("SAVEPOINT audit_append")
        try:
            yield
        except BaseException:
            cursor.execute("ROLLBACK TO audit_append")
            cursor.execute("RELEASE audit_append")
            raise
        cursor.execute("RELEASE audit_append")
    finally:
        cursor.close()


def _write_failed(count: int, kinds: Iterable[str], exc: BaseException) -> None:
    _LOG.error(
        "audit.write-failed: %d AuditEvent(s) (%s) not recorded: %s",
        count,
        ",".join(sorted(kinds)),
        type(exc).__name__,
    )


class _Deferred:
    """The events the stages append outside a transaction of theirs (signing, each
    delivery attempt, inbound receipts), for one engine: instead of a commit (an fsync)
    each, they are appended inside the next write transaction committed on the store
    (SQLAlchemy's ``commit`` event, under a SAVEPOINT: a failed append never fails that
    transaction) — usually the same stage's next step (the outbox row the signed Bundle
    goes into, the delivered row's transition), so an event and the step it records
    become durable together — or in a transaction of their own ``within`` seconds later
    if none came, before any read of the log, when the store closes and at the process's
    exit. A crash loses at most what was pending, as it loses the uncommitted step
    itself. The Merkle appends are the same ones: entries take their index when they
    join the tree (log order may follow a later commit by a few milliseconds;
    ``recorded`` keeps when each happened)."""

    _by_engine: ClassVar[dict[Any, _Deferred]] = {}
    _made = threading.Lock()

    @classmethod
    def of(cls, engine: Any, within: float) -> _Deferred:
        with cls._made:
            found = cls._by_engine.get(engine)
            if found is None:
                found = cls._by_engine[engine] = cls(engine, within)
            return found

    @classmethod
    def flush_engine(cls, engine: Any) -> None:
        """Commit what is pending for the database of ``engine``, through whichever
        engine of this process deferred it (the API's stores each have their own)."""
        with cls._made:
            found = [d for e, d in cls._by_engine.items() if e is engine or e.url == engine.url]
        for deferred in found:
            deferred.flush()

    @classmethod
    def flush_all(cls) -> None:
        for found in list(cls._by_engine.values()):
            found.flush()

    def __init__(self, engine: Any, within: float) -> None:
        self.engine = engine
        self.within = within
        self.failures = 0
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._waiting = threading.Event()  # rows are pending: the flusher's clock runs
        self._busy = threading.local()  # appending now: the commit that follows is ours
        self._closed = False
        sa.event.listen(engine, "commit", self._on_commit)
        sa.event.listen(engine, "engine_disposed", self._on_dispose)
        # one idle thread per store, not a timer per event (thread starts cost more than
        # the appends they guard)
        threading.Thread(target=self._flusher, name="audit-deferred", daemon=True).start()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._rows += rows
        self._waiting.set()

    def _flusher(self) -> None:
        """Pending rows wait at most ``within`` seconds for a commit to join."""
        while not self._closed:
            self._waiting.wait()
            time.sleep(self.within)
            self._waiting.clear()
            self.flush()

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            rows, self._rows = self._rows, []
            return rows

    def _on_commit(self, conn: Connection) -> None:
        """Before a write transaction on the store commits: the pending events join it."""
        if not self._rows or getattr(self._busy, "on", False):
            return
        if not conn.get_execution_options().get("write", False):
            return  # a read transaction (SQLite: deferred BEGIN) takes no writes
        rows = self._take()
        if rows:
            self._append(conn, rows, nested=True)

    def _append(self, conn: Connection, rows: list[dict[str, Any]], nested: bool) -> None:
        self._busy.on = True
        try:
            if nested:
                with _savepoint(conn):
                    _append_rows(conn, rows)
            else:
                _append_rows(conn, rows)
        except Exception as exc:
            self.failures += 1
            _write_failed(len(rows), {r["kind"] for r in rows}, exc)
            if not nested:
                raise
        finally:
            self._busy.on = False

    def flush(self) -> None:
        """Append what is pending in a transaction of its own."""
        rows = self._take()
        if not rows:
            return
        try:
            with self.engine.execution_options(write=True).begin() as conn:
                self._append(conn, rows, nested=False)
        except Exception:
            pass  # logged and counted by _append

    def _on_dispose(self, engine: Any) -> None:
        """The store closes: what is pending is committed, and the engine forgotten (its
        listeners stay, idle: removing them while the event runs is not allowed)."""
        with _Deferred._made:
            if _Deferred._by_engine.get(engine) is self:
                del _Deferred._by_engine[engine]
        if self._rows:
            self.flush()
            engine.pool.dispose()  # the connection the flush opened
        self._closed = True
        self._waiting.set()  # the flusher ends


atexit.register(_Deferred.flush_all)


class AuditWriter:
    """Group commit for the audit log: ``submit`` returns at once; a thread appends what
    was queued every ``flush_every`` seconds or ``max_batch`` events, in one transaction.
    Events still queued when the process dies are lost (at most ``flush_every`` of
    them): use ``record``/``record_in`` where an event must be durable with its step."""

    def __init__(self, log: AuditLog, flush_every: float, max_batch: int) -> None:
        self.log = log
        self.flush_every = flush_every
        self.max_batch = max_batch
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        self.failed = 0  # events that could not be appended (logged)

    def submit(self, *resources: Mapping[str, Any]) -> None:
        for resource in resources:
            self._queue.put(_prepare(resource))

    def close(self) -> None:
        """Append everything queued, then stop."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[dict[str, Any]] = []
            deadline = time.monotonic() + self.flush_every
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if batch:
                self._append(batch)

    def _append(self, batch: list[dict[str, Any]]) -> None:
        try:
            with self.log._writer.begin() as conn:
                self.log.append_rows(conn, batch)
        except sa.exc.SQLAlchemyError as exc:
            self.failed += len(batch)
            _LOG.error("audit writer: %d events not appended: %s", len(batch), type(exc).__name__)


def decode_hash(text: Any, what: str) -> bytes:
    try:
        raw = b64decode(str(text), validate=True)
    except ValueError:
        raise AuditError("audit.bad-export", f"{what} is not base64") from None
    if len(raw) != 32:
        raise AuditError("audit.bad-export", f"{what} is not a SHA-256 hash")
    if b64encode(raw).decode() != text:  # one spelling only: unused bits, no line breaks
        raise AuditError("audit.bad-export", f"{what} is not base64")
    return raw
