"""Claiming outbox rows when several workers share a store (SQLite and PostgreSQL):
batches are disjoint, a patient's next record is never claimed while an earlier one is
undelivered, a claim that ran out is fenced off, rows let go are due at once, and on
PostgreSQL a row another transaction holds is skipped, not waited for."""

from __future__ import annotations

import threading
from datetime import timedelta

import sqlalchemy as sa

from gateway.delivery import Outbox
from gateway.delivery._service import sweep_lock
from gateway.store import Store, metadata

from .conftest import CONFIG, PARTNER, Clock, bundle

LEASE = CONFIG.lease


def _queue(outbox: Outbox, *patients: str) -> list[int]:
    return [outbox.enqueue(PARTNER, bundle(p, f"O{n}"))[0] for n, p in enumerate(patients)]


def test_workers_claim_disjoint_batches_one_row_per_patient(outbox: Outbox, clock: Clock) -> None:
    p1a, p2a, p1b, p2b, p3, p4 = _queue(outbox, "P1", "P2", "P1", "P2", "P3", "P4")
    first, _ = outbox.claim_due(clock.now, LEASE, limit=2)
    second, _ = outbox.claim_due(clock.now, LEASE, limit=10)
    assert [r.id for r in first] == [p1a, p2a]
    assert [r.id for r in second] == [p3, p4]  # P1 and P2's next wait for their first
    assert outbox.claim_due(clock.now, LEASE)[0] == []
    outbox.move(p1a, "pending", "delivered", "test", now=clock.now)
    third, _ = outbox.claim_due(clock.now, LEASE)
    assert [r.id for r in third] == [p1b]  # delivered: the patient's next is due
    assert p2b not in [r.id for r in third]


def test_a_claim_that_ran_out_is_fenced_off(outbox: Outbox, clock: Clock) -> None:
    [row] = _queue(outbox, "P1")
    [mine], token = outbox.claim_due(clock.now, LEASE)
    clock.advance(LEASE.total_seconds())  # this worker was too slow: the lease ran out
    [theirs], other = outbox.claim_due(clock.now, LEASE)
    assert theirs.id == row and other > token
    assert not outbox.renew(mine, token, clock.now, LEASE)  # the row is the other's now
    assert outbox.renew(theirs, other, clock.now, LEASE)


def test_rows_let_go_are_due_at_once_and_begun_ones_are_not_touched(
    outbox: Outbox, clock: Clock
) -> None:
    begun, left = _queue(outbox, "P1", "P2")
    claimed, token = outbox.claim_due(clock.now, LEASE)
    assert outbox.renew(claimed[0], token, clock.now + timedelta(seconds=1), LEASE)
    assert outbox.unclaim([begun, left], token) == 1
    assert [r.id for r in outbox.claim_due(clock.now, LEASE)[0]] == [left]


def test_postgresql_skips_a_row_another_worker_is_claiming(store: Store, clock: Clock) -> None:
    if store.dialect != "postgresql":
        return  # SQLite has one writer at a time: nothing to skip
    outbox = Outbox(store, clock)
    held, free = _queue(outbox, "P1", "P2")
    o = metadata.tables["outbox"]
    got: list[int] = []
    with store.engine.connect() as other:  # a worker in the middle of its claim
        other.execute(sa.select(o.c.id).where(o.c.id == held).with_for_update())
        claim = threading.Thread(
            target=lambda: got.extend(r.id for r in outbox.claim_due(clock.now, LEASE)[0])
        )
        claim.start()
        claim.join(20)
        finished = not claim.is_alive()
        other.rollback()
    claim.join()
    assert finished and got == [free]  # not waited for, not taken twice


def test_one_process_sweeps_at_a_time(store: Store) -> None:
    # Another process's sweep is another connection (PostgreSQL's advisory lock) or
    # another open file (SQLite's flock): the same as a second sweep_lock here.
    with sweep_lock(store) as first, sweep_lock(store) as second:
        assert first and not second
    with sweep_lock(store) as again:
        assert again
