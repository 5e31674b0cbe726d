"""The outbound path keeps a record's policy decision and the outbox row (or hold) it
leads to in ONE transaction: one commit per placed record (an fsync on SQLite:
bench/RESULTS.md), and never a decision kept without its row, or the reverse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from gateway import Converter
from gateway.delivery import DeliveryError, Outbound
from gateway.delivery import _outbox as outbox_module
from gateway.policy import PolicyRecords
from gateway.store import Store
from tests.delivery.conftest import bundle, home_store, receive

DOMESTIC = "hl7v2/ref_i12_lax2_to_njmu2.hl7"  # allowed: queued for njmu2
HELD = "imaging/oru_r01_nsch_cta_zh.hl7"  # to Hong Kong, no consent yet: held
store = home_store  # these tests' store is the home's (conftest), not a bare one per backend


@contextmanager
def counting(store: Store, commits: list[str]) -> Iterator[None]:
    """Each commit on the store's engine, named by whether an outbox row was inserted
    in its transaction."""
    inserted: set[int] = set()

    def on_execute(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO OUTBOX "):
            inserted.add(id(conn.connection.dbapi_connection))

    def on_commit(conn: Any) -> None:
        key = id(conn.connection.dbapi_connection)
        commits.append("outbox row" if key in inserted else "other")
        inserted.discard(key)

    sa.event.listen(store.engine, "before_cursor_execute", on_execute)
    sa.event.listen(store.engine, "commit", on_commit)
    try:
        yield
    finally:
        sa.event.remove(store.engine, "commit", on_commit)
        sa.event.remove(store.engine, "before_cursor_execute", on_execute)


def commits_per_place(
    outbound: Outbound, store: Store, monkeypatch: pytest.MonkeyPatch
) -> list[list[str]]:
    """The commits made while placing each record (decision, outbox row)."""
    seen: list[list[str]] = []
    place = Outbound._place

    def counted(self: Outbound, *args: Any) -> Any:
        commits: list[str] = []
        with counting(store, commits):
            placed = place(self, *args)
        seen.append(commits)
        return placed

    monkeypatch.setattr(Outbound, "_place", counted)
    return seen


@pytest.mark.parametrize(("example", "outcome"), [(DOMESTIC, "queued"), (HELD, "held")])
def test_a_decision_and_its_outbox_row_take_one_commit(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    example: str,
    outcome: str,
) -> None:
    message = receive(store, converter, example)
    seen = commits_per_place(outbound, store, monkeypatch)
    [placed] = outbound.process(message).placed
    assert placed.outcome == outcome
    assert seen == [["outbox row"]]  # the decision's rows are in that same commit
    [decision] = outbound.policy.find(message_id=message)
    assert decision.id == placed.decision_id
    row = outbound.outbox.require(placed.outbox_id or 0)
    assert f"decision {decision.id}" in outbound.outbox.events(row.id)[0].reason


def _nothing_kept(store: Store, outbound: Outbound, message: int) -> None:
    assert outbound.policy.find(message_id=message) == []
    assert outbound.outbox.records() == []
    stored = store.get(message)
    assert stored is not None
    assert [o.stage for o in stored.outcomes if o.stage == "policy"] == []
    assert store.state_of(message) == "converted"


@pytest.mark.parametrize("example", [DOMESTIC, HELD])
def test_a_failed_outbox_insert_keeps_no_decision(
    store: Store,
    converter: Converter,
    outbound: Outbound,
    monkeypatch: pytest.MonkeyPatch,
    example: str,
) -> None:
    message = receive(store, converter, example)

    def failing(*args: Any, **kwargs: Any) -> int:
        raise DeliveryError("delivery.outbound-failed", "the outbox row: disk full")

    monkeypatch.setattr(outbox_module, "_insert", failing)
    [placed] = outbound.process(message).placed
    assert (placed.outcome, placed.code, placed.decision_id) == (
        "failed",
        "delivery.outbound-failed",
        None,
    )
    _nothing_kept(store, outbound, message)


def test_a_failed_commit_of_the_outbox_row_keeps_no_decision(
    store: Store, converter: Converter, outbound: Outbound
) -> None:
    message = receive(store, converter, DOMESTIC)
    commits: list[str] = []

    def fsync_fails(conn: Any) -> None:
        if commits and commits[-1] == "outbox row":
            raise sa.exc.OperationalError("COMMIT", None, OSError("disk I/O error"))

    with counting(store, commits):
        sa.event.listen(store.engine, "commit", fsync_fails)
        try:
            with pytest.raises(sa.exc.OperationalError):
                outbound.process(message)
        finally:
            sa.event.remove(store.engine, "commit", fsync_fails)
    _nothing_kept(store, outbound, message)


def test_a_failed_decision_keeps_no_outbox_row(
    store: Store, converter: Converter, outbound: Outbound, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = receive(store, converter, DOMESTIC)
    keep = PolicyRecords._keep

    def failing(self: PolicyRecords, conn: Any, *args: Any) -> None:
        keep(self, conn, *args)  # the rows written, then the transaction fails
        raise sa.exc.OperationalError("INSERT", None, OSError("disk I/O error"))

    monkeypatch.setattr(PolicyRecords, "_keep", failing)
    with pytest.raises(sa.exc.OperationalError):
        outbound.process(message)
    _nothing_kept(store, outbound, message)


class _MissesFirstLookUp:
    """The caller's connection, whose first query (the dedup look-up) sees nothing: as
    when another writer inserts the same row between the look-up and the insert."""

    def __init__(self, conn: sa.Connection) -> None:
        self.conn = conn
        self.missed = False

    def execute(self, statement: Any, *args: Any) -> Any:
        if not self.missed:
            self.missed = True
            return self.conn.execute(sa.select(sa.literal(1)).where(sa.false()))
        return self.conn.execute(statement, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


def test_a_lost_dedup_race_in_the_callers_transaction_is_already_there(
    store: Store, outbound: Outbound
) -> None:
    partner = outbound.partners["njmu2"]
    sent = bundle("MRN-1", "ORD-1")
    first, _ = outbound.outbox.enqueue(partner, sent, dedup="same")
    with store.engine.execution_options(write=True).begin() as conn:
        racing = _MissesFirstLookUp(conn)
        again = outbound.outbox.enqueue(partner, sent, dedup="same", conn=racing)  # type: ignore[arg-type]
        assert racing.missed
        # The insert failed in its SAVEPOINT only: the caller's transaction goes on.
        conn.execute(sa.select(sa.literal(1))).scalar_one()
    assert again == (first, False)
    assert [r.id for r in outbound.outbox.records()] == [first]
