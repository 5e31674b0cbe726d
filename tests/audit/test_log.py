"""The live log: appending (frontier, roots, concurrent writers), signed tree heads, and
`verify` naming the first bad entry after each kind of tampering done directly in the
database."""

from __future__ import annotations

import threading
from datetime import timedelta

import orjson
import pytest
import sqlalchemy as sa

from gateway.audit import AuditLog, Subject, Tree, events, leaf_hash, verify_log
from gateway.audit._merkle import Frontier
from gateway.audit._tables import entries, state
from gateway.signing import Signer, canonicalize

from .conftest import START, transfer_events


def test_appends_number_entries_and_keep_the_root(log: AuditLog) -> None:
    appended = log.record_many(transfer_events(37))
    assert [a.index for a in appended] == list(range(37))
    leaves = log.leaf_hashes()
    tree = Tree(leaves)
    assert log.current() == (37, tree.root())
    assert appended[-1].root == tree.root()
    for a in appended:
        assert a.root == tree.root(a.index + 1)  # the root after each append, from the frontier
    first = next(log.rows())
    assert leaf_hash(first.canonical) == first.leaf_hash
    assert canonicalize(orjson.loads(first.canonical)) == first.canonical
    assert verify_log(log).ok


def test_concurrent_writers_get_distinct_contiguous_indices(log: AuditLog) -> None:
    errors: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i, event in enumerate(transfer_events(15, START + timedelta(hours=k))):
                log.record(event) if i % 2 else log.record_many([event])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    indices = [e.index for e in log.rows()]
    assert indices == list(range(90))
    verdict = verify_log(log)
    assert verdict.ok, [p.line() for p in verdict.problems]


def test_signed_heads_verify_and_link(log: AuditLog, signer: Signer) -> None:
    log.record_many(transfer_events(10))
    first = log.sign_head(signer)
    log.record_many(transfer_events(13))
    second = log.sign_head(signer)
    assert (first.tree_size, second.tree_size) == (10, 23)
    verdict = verify_log(log)
    assert verdict.ok, [p.line() for p in verdict.problems]
    assert verdict.heads == 2 and verdict.entries == 23
    assert "南沙" in verdict.signers[0] or "Nansha" in verdict.signers[0]


def test_sign_if_due(log: AuditLog, signer: Signer) -> None:
    log.record_many(transfer_events(3))
    assert log.sign_if_due(signer, timedelta(hours=1)) is not None  # none yet
    assert log.sign_if_due(signer, timedelta(hours=1)) is None  # nothing new
    log.record_many(transfer_events(2))
    assert log.sign_if_due(signer, timedelta(hours=1)) is None  # too soon
    assert log.sign_if_due(signer, timedelta(0)) is not None


# -- tampering in the database ----------------------------------------------------------
def _exec(log: AuditLog, *statements: sa.Executable) -> None:
    with log.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def _event_id(log: AuditLog, index: int) -> str:
    return next(e.event_id for e in log.rows() if e.index == index)


def _lines(log: AuditLog) -> list[str]:
    verdict = verify_log(log)
    assert not verdict.ok
    return [p.line() for p in verdict.problems]


@pytest.fixture
def filled(log: AuditLog, signer: Signer) -> AuditLog:
    log.record_many(transfer_events(20))
    log.sign_head(signer)
    return log


def test_altered_event_is_named(filled: AuditLog) -> None:
    entry = next(e for e in filled.rows() if e.index == 7)
    event = orjson.loads(entry.canonical)
    event["outcome"] = "8"  # a success rewritten as a failure
    _exec(
        filled, sa.update(entries).where(entries.c.idx == 7).values(canonical=canonicalize(event))
    )
    lines = _lines(filled)
    assert lines[0].startswith(f"entry 7 (event {entry.event_id}): the stored event does not hash")
    assert lines[0].endswith("[audit.altered]")


def test_deleted_event_is_named(filled: AuditLog) -> None:
    _exec(filled, sa.delete(entries).where(entries.c.idx == 5))
    lines = _lines(filled)
    assert lines[0].startswith("entry 5: entries 5..5 are missing (deleted)")


def test_deleted_and_renumbered_is_named(filled: AuditLog) -> None:
    moved = _event_id(filled, 6)
    _exec(
        filled,
        sa.delete(entries).where(entries.c.idx == 5),
        sa.update(entries).where(entries.c.idx > 5).values(idx=entries.c.idx + 1000),
        sa.update(entries).where(entries.c.idx > 1000).values(idx=entries.c.idx - 1001),
        sa.update(state).values(size=19),
    )
    lines = _lines(filled)
    assert lines[0].startswith(f"entry 5 (event {moved}): the tree of the entries up to here")
    assert lines[0].endswith("[audit.reordered]")


def test_inserted_event_is_named(filled: AuditLog) -> None:
    forged = events.delivery(
        "HKPMC",
        Subject("Patient/3f0c9a43-wang-wei"),
        url=None,
        outcome="success",
        basis="gba-standard-contract",
        when=START,  # the forger keeps the recorded column in step with the event
    )
    canonical = canonicalize(forged)
    # made room for it at 5, with a correct leaf hash (the forger knows RFC 9162)
    _exec(
        filled,
        sa.update(entries).where(entries.c.idx >= 5).values(idx=entries.c.idx + 1000),
        sa.update(entries).where(entries.c.idx >= 1000).values(idx=entries.c.idx - 999),
        sa.insert(entries).values(
            idx=5,
            event_id=forged["id"],
            recorded=START.replace(tzinfo=None),
            kind="delivery",
            patient="Patient/3f0c9a43-wang-wei",
            partner="HKPMC",
            canonical=canonical,
            leaf_hash=leaf_hash(canonical),
            root=b"\0" * 32,
        ),
        sa.update(state).values(size=21),
    )
    lines = _lines(filled)
    assert lines[0].startswith(f"entry 5 (event {forged['id']}): the tree of the entries")


def test_appended_outside_the_gateway_is_named(filled: AuditLog) -> None:
    forged = events.converted(Subject("Patient/x"), when=START)
    canonical = canonicalize(forged)
    tree = Tree([*filled.leaf_hashes(), leaf_hash(canonical)])
    _exec(
        filled,
        sa.insert(entries).values(
            idx=20,
            event_id=forged["id"],
            recorded=START.replace(tzinfo=None),
            kind="converted",
            patient="Patient/x",
            partner=None,
            canonical=canonical,
            leaf_hash=leaf_hash(canonical),
            root=tree.root(),
        ),
    )
    lines = _lines(filled)
    assert lines == [
        f"entry 20 (event {forged['id']}): not counted by the log's state (20 entries): "
        "written outside the gateway [audit.inserted]"
    ]


def test_reordered_events_are_named(filled: AuditLog) -> None:
    a, b = (next(e for e in filled.rows() if e.index == i) for i in (8, 9))
    _exec(
        filled,
        sa.update(entries).where(entries.c.idx == 8).values(idx=-1),
        sa.update(entries).where(entries.c.idx == 9).values(idx=8, root=a.root),
        sa.update(entries).where(entries.c.idx == -1).values(idx=9, root=b.root),
    )
    lines = _lines(filled)
    assert lines[0].startswith(f"entry 8 (event {b.event_id}): the tree of the entries up to here")


def _rewrite(log: AuditLog, index: int) -> None:
    """A thorough forger: change one event, then recompute every leaf hash, stored root
    and the frontier so that the log agrees with itself."""
    rows = list(log.rows())
    event = orjson.loads(rows[index].canonical)
    event["outcome"] = "4"
    rewritten = canonicalize(event)
    frontier = Frontier()
    statements: list[sa.Executable] = []
    for row in rows:
        canonical = rewritten if row.index == index else row.canonical
        frontier = frontier.append(leaf_hash(canonical))
        statements.append(
            sa.update(entries)
            .where(entries.c.idx == row.index)
            .values(canonical=canonical, leaf_hash=leaf_hash(canonical), root=frontier.root())
        )
    statements.append(sa.update(state).values(frontier=b"".join(frontier.hashes)))
    _exec(log, *statements)


def test_a_thorough_rewrite_breaks_the_signed_heads(log: AuditLog, signer: Signer) -> None:
    log.record_many(transfer_events(12))
    old = log.sign_head(signer)  # yesterday's
    log.record_many(transfer_events(9))
    new = log.sign_head(signer)  # today's
    _rewrite(log, 3)
    lines = _lines(log)
    assert lines == [
        f"log: signed head #{old.id} (size 12): the log's root at that size is not the signed "
        "one: entries before 12 changed after it was signed [audit.rewritten]",
        f"log: signed head #{new.id} (size 21): the log's root at that size is not the signed "
        "one: entries before 21 changed after it was signed [audit.rewritten]",
        f"log: signed heads #{old.id} (size 12) and #{new.id} (size 21): no consistency proof "
        "from the log links them: history was rewritten [audit.inconsistent]",
    ]


def test_a_rewrite_between_two_heads_breaks_their_consistency(
    log: AuditLog, signer: Signer
) -> None:
    log.record_many(transfer_events(12))
    old = log.sign_head(signer)
    _rewrite(log, 3)  # history rewritten, then a new head signed over the rewritten log
    log.record_many(transfer_events(5))
    new = log.sign_head(signer)
    lines = _lines(log)
    assert f"signed heads #{old.id} (size 12) and #{new.id} (size 17)" in lines[-1]
    assert lines[-1].endswith("[audit.inconsistent]")
    assert not any(f"#{new.id} (size 17): the log's root" in line for line in lines)


def test_a_forged_head_signature_is_refused(filled: AuditLog) -> None:
    from gateway.audit._tables import heads

    _exec(filled, sa.update(heads).values(root_hash=b"\1" * 32))
    lines = _lines(filled)
    assert "signature refused" in lines[0] and "[audit.bad-head]" in lines[0]


def test_the_background_writer_appends_everything_in_group_commits(log: AuditLog) -> None:
    writer = log.writer(flush_every=0.05, max_batch=7)

    def submit(k: int) -> None:
        for event in transfer_events(20, START + timedelta(hours=k)):
            writer.submit(event)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    assert writer.failed == 0
    assert [e.index for e in log.rows()] == list(range(60))
    assert verify_log(log).ok


def test_record_in_commits_with_the_callers_transaction(log: AuditLog) -> None:
    events_ = transfer_events(3)
    with pytest.raises(RuntimeError), log.engine.execution_options(write=True).begin() as conn:
        log.record_in(conn, *events_)
        raise RuntimeError("the step failed: its events roll back with it")
    assert log.size() == 0 and list(log.rows()) == []
    with log.engine.execution_options(write=True).begin() as conn:
        appended = log.record_in(conn, *events_)
    assert [a.index for a in appended] == [0, 1, 2] and verify_log(log).ok
