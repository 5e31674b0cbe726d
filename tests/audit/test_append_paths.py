"""The cheaper append paths (gateway/audit/_log.py) keep the tree exact: the state an
append last left is reused only when the database still holds it (a rolled-back append,
or another process's, sends it back to reading the state); events appended outside a
transaction join the store's next write commit, or their own, and a read sees them."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from gateway.audit import AuditLog, Subject, Tree, events, verify_log
from gateway.audit import _log as audit_log_module
from gateway.store import Incoming, Store
from tests.conftest import REPO

from .conftest import PATIENTS


def event(n: int) -> dict[str, object]:
    return events.converted(Subject(PATIENTS[n % 3], (f"Bundle/b-{n}",)))


def roots_hold(log: AuditLog) -> None:
    entries = list(log.rows())
    assert [e.index for e in entries] == list(range(len(entries)))
    tree = Tree([e.leaf_hash for e in entries])
    assert all(e.root == tree.root(e.index + 1) for e in entries)
    assert log.current() == (len(entries), tree.root(len(entries)))
    assert verify_log(log).ok


def test_a_rolled_back_append_and_another_writers_are_not_built_upon(log: AuditLog) -> None:
    log.record(event(0))
    try:
        with log.engine.execution_options(write=True).begin() as conn:
            log.record_in(conn, event(1))
            raise RuntimeError("the step failed: its events go with it")
    except RuntimeError:
        pass
    key = log.engine.url
    stale = audit_log_module._last_state[key]  # size 2, with the rolled-back leaf
    log.record(event(2))  # reads the state (size 1) and appends at index 1
    assert [e.index for e in log.rows()] == [0, 1]
    # another process appended at the size this one last saw, with another leaf
    audit_log_module._last_state[key] = stale
    log.record(event(3))
    roots_hold(log)
    assert len(list(log.rows())) == 3


def test_deferred_events_join_the_next_write_commit(store: Store) -> None:
    log = AuditLog(store, defer=60)  # no timer within the test: only commits move them
    assert log.record_guarded(None, event(0), event(1))
    with store.engine.connect() as conn:  # not yet in the table
        assert conn.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar() == 0
    with store.engine.execution_options(write=True).begin() as conn:
        conn.execute(sa.text("SELECT 1"))  # any write transaction of the store's
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM audit_entries")).scalar() == 2
    assert log.record_guarded(None, event(2))
    assert len(list(log.rows())) == 3  # a read commits what is pending first
    roots_hold(log)


def test_deferred_events_are_committed_when_the_store_closes(store: Store) -> None:
    url = store.engine.url
    AuditLog(store, defer=60).record_guarded(None, event(0))
    store.close()
    reopened = Store.open(url.render_as_string(hide_password=False))
    try:
        assert [e.kind for e in AuditLog(reopened).rows()] == ["converted"]
    finally:
        reopened.close()


def test_a_deferred_append_that_fails_never_fails_the_commit_it_joins(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(store, defer=60)
    log.record(event(0))
    with store.engine.begin() as conn:  # the log's table is gone: every append fails
        conn.exec_driver_sql("ALTER TABLE audit_entries RENAME TO audit_entries_gone")
    assert log.record_guarded(None, event(1))  # queued
    raw = (REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes()
    with caplog.at_level(logging.ERROR, "gateway.audit"):
        message = store.receive(Incoming(raw, "mllp")).id  # commits, and the append fails
    assert store.get(message) is not None  # the store's own write committed
    assert log.failures == 1
    [line] = [r.getMessage() for r in caplog.records if r.name == "gateway.audit"]
    assert line.startswith("audit.write-failed: 1 AuditEvent(s) (converted)")
