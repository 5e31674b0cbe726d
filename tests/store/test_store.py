"""The message store: migrations, idempotent intake, outcomes, look-ups, keyset pages,
retention, and DICOM instances gathered into studies; on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import gateway.alerts  # (and the alerts' state: migration 0008_alerts)
import gateway.audit  # its tables join the store's metadata too: compared below
import gateway.console  # (the console's too: migration 0007_console)
import gateway.inbound  # (so do the inbound stage's tables: migration 0005_inbound)
import gateway.policy  # noqa: F401  (its tables join the store's metadata: compared below too)
from gateway import Converter
from gateway.errors import Issue
from gateway.processing import process_message
from gateway.store import (
    NEVER_PRUNED,
    DicomInstance,
    Incoming,
    MessageFilter,
    Receipt,
    StageOutcome,
    Store,
    StoreError,
    metadata,
    utcnow,
)

REPO = Path(__file__).resolve().parents[2]
HL7 = REPO / "examples" / "hl7v2"
STUDY = REPO / "examples" / "imaging" / "lax2_ct_head.study"


def msg(control: str, body: str = "x", sender: str = "LAX2", state: str = "received") -> Incoming:
    raw = f"MSH|^~\\&|HIS|{sender}|GW|GW|20260101||ORU^R01|{control}|P|2.5\rZZZ|{body}\r"
    return Incoming(
        raw.encode(),
        "cli",
        sender=sender,
        control_id=control,
        message_type="ORU^R01",
        state=state,
    )


def test_migrations_create_exactly_the_schema_and_run_twice(store: Store) -> None:
    store.upgrade()  # idempotent: a second start changes nothing
    assert store.revision() == "0018_partner_pauses"  # beside every Patient ref
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_sqlite_is_durable_and_concurrent(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_the_same_message_twice_is_one_row(store: Store) -> None:
    first = store.receive(msg("C1"))
    again = store.receive(msg("C1"))
    assert not first.duplicate and again.duplicate
    assert again.id == first.id and again.revision == 1 and not again.flagged
    assert store.count() == 1


def test_same_control_id_other_bytes_is_a_flagged_revision(store: Store) -> None:
    first = store.receive(msg("C1", "a"))
    second = store.receive(msg("C1", "b"))
    other_sender = store.receive(msg("C1", "b", sender="NSCH"))
    assert (second.revision, second.flagged) == (2, True)
    assert second.id != first.id
    assert (other_sender.revision, other_sender.flagged) == (1, False)
    assert store.count() == 3


def test_a_row_refused_for_its_sender_is_no_revision_of_anothers(store: Store) -> None:
    """A refusal by the MLLP sender check is counted as an earlier revision only by the
    same authenticated sender: a certificate naming no institution and without a common
    name (auth_sender None) is no sender a plain connection's message shares."""
    refusal = Issue("intake.mllp-client-no-institution", "names no institution", "MSH-4")
    spoof = replace(msg("C1", "spoof", state="rejected"), channel="mllp", issues=(refusal,))
    store.receive(spoof)
    charset = Issue("intake.charset-mislabelled", "not 8859/1", "MSH-18")
    store.receive(replace(msg("C2", "bad", state="rejected"), issues=(charset,)))
    real = store.receive(msg("C1", "real"))
    fixed = store.receive(msg("C2", "fixed"))
    assert (real.revision, real.flagged) == (1, False)
    assert (fixed.revision, fixed.flagged) == (2, True)  # refused for its charset: counted


def test_receive_many_is_one_transaction(store: Store) -> None:
    receipts = store.receive_many([msg("A"), msg("B"), msg("A")])
    assert [r.duplicate for r in receipts] == [False, False, True]
    assert receipts[2].id == receipts[0].id
    with pytest.raises(sa.exc.StatementError):  # a NULL channel breaks the batch ...
        store.receive_many([msg("C"), Incoming(b"x", None)])  # type: ignore[arg-type]
    assert store.count() == 2  # ... and nothing of it is kept


def test_rejected_message_keeps_its_intake_issue(store: Store) -> None:
    issue = Issue("intake.no-msh", "no MSH segment", location="MSH")
    receipt = store.receive(Incoming(b"garbage", "mllp", state="rejected", issues=(issue,)))
    stored = store.get(receipt.id)
    assert stored is not None and stored.state == "rejected"
    assert stored.outcomes[0].stage == "intake"
    assert stored.outcomes[0].issues == [
        {
            "code": "intake.no-msh",
            "severity": "error",
            "message": "no MSH segment",
            "location": "MSH",
        }
    ]


def test_process_converts_and_indexes_patients(store: Store, converter: Converter) -> None:
    raw = (HL7 / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
    receipt = store.receive(Incoming(raw, "cli"))
    outcome = process_message(store, converter, receipt.id)
    assert outcome.state == "converted" and outcome.attempt == 1
    expected = converter.convert(raw)[0]
    assert outcome.output == expected.bundle_json
    stored = store.get(receipt.id)
    assert stored is not None and stored.raw == raw
    # what intake did not say, the conversion filled in
    assert stored.summary.control_id == "LAX220260611101500003"
    assert stored.summary.message_type == "REF^I12"
    assert stored.summary.charset is not None
    assert stored.patients, "the Patient's identifiers are indexed"
    identifier = stored.patients[0]
    by_identifier = store.find(MessageFilter(patient=identifier)).items
    by_value = store.find(MessageFilter(patient=identifier.rpartition("|")[2])).items
    assert [s.id for s in by_identifier] == [s.id for s in by_value] == [receipt.id]


def test_failed_message_then_reprocess_keeps_both_outcomes(
    store: Store, converter: Converter
) -> None:
    raw = (HL7 / "ref_i12_nsgp_to_nsch.hl7").read_bytes().replace(b"REF^I12", b"ZZZ^Z99", 1)
    receipt = store.receive(Incoming(raw, "cli"))
    first = process_message(store, converter, receipt.id)
    assert first.state == "failed" and first.output is None
    assert first.issues[0]["code"] == "mapping.unsupported-message"
    # the failed message is found by its patient (PID-3) too
    stored = store.get(receipt.id)
    assert stored is not None and stored.patients
    second = process_message(store, converter, receipt.id)
    stored = store.get(receipt.id)
    assert stored is not None
    assert [(o.attempt, o.current) for o in stored.outcomes] == [(1, False), (2, True)]
    assert second.attempt == 2
    assert store.find(MessageFilter(state="failed")).items[0].id == receipt.id


def test_process_unknown_and_pruned(store: Store, converter: Converter) -> None:
    with pytest.raises(StoreError) as info:
        process_message(store, converter, 999)
    assert info.value.code == "store.not-found"
    receipt = store.receive(msg("OLD", state="received"))
    store.record_outcome(receipt.id, StageOutcome("convert", "failed"))
    assert store.prune({"failed": timedelta(0)}, utcnow() + timedelta(seconds=1)) == 1
    with pytest.raises(StoreError) as info:
        process_message(store, converter, receipt.id)
    assert info.value.code == "store.pruned"


def test_keyset_pages_with_filters(store: Store) -> None:
    for n in range(25):
        store.receive(msg(f"M{n}", sender="LAX2" if n % 2 else "NSCH"))
    for n in range(0, 25, 3):
        store.set_state(n + 1, "failed")
    seen: list[int] = []
    after = None
    while True:
        page = store.find(MessageFilter(sender="LAX2"), limit=4, after=after)
        seen += [s.id for s in page.items]
        if page.next is None:
            break
        after = page.next
    assert seen == sorted((n + 1 for n in range(25) if n % 2), reverse=True)
    failed_lax2 = store.find(MessageFilter(state="failed", sender="LAX2"), limit=100).items
    assert [s.id for s in failed_lax2] == [n + 1 for n in (21, 15, 9, 3)]
    assert [s.id for s in store.find(MessageFilter(control_id="M7")).items] == [8]
    assert store.find(MessageFilter(message_type="ADT^A01")).items == []
    assert len(store.find(MessageFilter(since=utcnow() - timedelta(minutes=5))).items) == 25
    assert store.find(MessageFilter(since=utcnow() + timedelta(minutes=5))).items == []
    with pytest.raises(StoreError):
        store.find(after="nonsense")


def test_refused_bytes_accepted_later_are_received_again(store: Store) -> None:
    """A listener refused these bytes (kept 'rejected'); the operator fixed the cause and
    the sender resent them, now accepted: the same row becomes 'received' (not a
    duplicate: it must be converted), with its content back if pruned meanwhile, and
    its refusal kept among its outcomes, no longer current; the row names the connection
    that sent the accepted copy (a message refused for its sender is accepted when the
    institution it names sends it: gateway/processing.py reads the current refusal)."""
    issue = Issue("intake.charset-mislabelled", "declared 8859/1, bytes GB 18030", "MSH-18")
    refused = store.receive(
        Incoming(
            msg("R1").raw,
            "mllp",
            sender="LAX2",
            control_id="R1",
            peer="10.0.0.9:40000",
            auth_sender="HKPMC-CMS",
            state="rejected",
            issues=(issue,),
        )
    )
    assert store.current_issues(refused.id, "intake")[0]["code"] == issue.code
    assert store.prune({"rejected": timedelta(days=1)}, utcnow() + timedelta(days=2)) == 1
    accepted = store.receive(msg("R1"))
    assert (accepted.id, accepted.duplicate, accepted.state) == (refused.id, False, "received")
    assert store.pending() == [refused.id]
    stored = store.get(refused.id)
    assert stored is not None and stored.raw == msg("R1").raw and stored.summary.pruned_at is None
    assert stored.summary.message_type == "ORU^R01"
    assert [(o.stage, o.current) for o in stored.outcomes] == [("intake", False)]
    assert store.current_issues(refused.id, "intake") == []
    summary = stored.summary
    assert (summary.channel, summary.peer, summary.auth_sender) == ("cli", None, None)
    again = store.receive(msg("R1"))  # resent once more: now a plain duplicate
    assert (again.id, again.duplicate) == (refused.id, True)
    assert store.count() == 1


def test_header_values_longer_than_their_columns_are_kept_clipped(store: Store) -> None:
    """A sender's MSH-10 of 300 characters (or an MSH-4, MSH-9, MSH-18 beyond their
    columns): PostgreSQL refused the row (VARCHAR(255)), the listener answered AE 'send
    it again later', and the sender resent the same message for ever. The row is kept
    with the values clipped to their columns; a resend is still the same row."""
    long = Incoming(
        b"MSH|^~\\&|...\r",
        "mllp",
        peer="p" * 300,
        auth_sender="a" * 300,
        sender="S" * 300,
        control_id="C" * 300,
        message_type="T" * 100,
        charset="X" * 40,
    )
    first = store.receive(long)
    assert store.receive(long) == Receipt(first.id, True, 1, False, "received")
    summary = store.find(MessageFilter(control_id="C" * 255)).items[0]
    assert (summary.sender, summary.message_type, summary.charset) == (
        "S" * 255,
        "T" * 64,
        "X" * 32,
    )
    learnt = store.receive(Incoming(b"other", "api"))  # what conversion learns is clipped too
    outcome = StageOutcome("convert", "failed", control_id="D" * 300, message_type="U" * 100)
    store.record_outcome(learnt.id, outcome)
    found = store.get(learnt.id)
    assert found is not None and found.summary.control_id == "D" * 255


def test_header_values_holding_nul_are_kept_with_u_fffd(store: Store) -> None:
    """A refused HL7 message's MSH-10 or MSH-4 holding a raw NUL (read from its bytes to
    keep it as evidence), a DICOM header with one: PostgreSQL's text holds no NUL, the
    insert failed, and with it every message of the listener's group commit. The header
    is kept with U+FFFD in its place; the bytes are kept as sent; a resend is one row."""
    raw = b"MSH|^~\\&|HIS|L\x00AX|GW|GW|20260101||ORU^R01|C\x001|P|2.5\r"
    nul = Incoming(
        raw, "mllp", peer="p\0", auth_sender="a\0", sender="L\0AX", control_id="C\0" + "1",
        message_type="ORU\0", charset="x\0", state="rejected",
    )  # fmt: skip
    first, beside = store.receive_many([nul, msg("OK-1")])
    assert store.receive(nul) == Receipt(first.id, True, 1, False, "rejected")
    found = store.get(first.id)
    assert found is not None and found.raw == raw
    summary = found.summary
    assert (summary.sender, summary.control_id, summary.peer) == (
        "L\ufffdAX",
        "C\ufffd1",
        "p\ufffd",
    )
    assert store.state_of(beside.id) == "received"
    outcome = StageOutcome("convert", "failed", control_id="D\0", sender="S\0")
    learnt = store.receive(Incoming(b"other", "api"))
    store.record_outcome(learnt.id, outcome)
    found = store.get(learnt.id)
    assert found is not None and found.summary.control_id == "D\ufffd"


def test_prune_keeps_stubs_and_never_touches_waiting_messages(store: Store) -> None:
    done = store.receive(msg("DONE"))
    store.record_outcome(done.id, StageOutcome("convert", "converted", output=b"{}"))
    waiting = store.receive(msg("WAIT"))
    later = utcnow() + timedelta(days=400)
    retention = {state: timedelta(days=1) for state in ("converted", *NEVER_PRUNED)}
    assert store.prune(retention, later) == 1
    stub = store.get(done.id)
    assert stub is not None and stub.raw is None and stub.summary.pruned_at is not None
    assert stub.summary.sha256 and stub.outcomes[0].output is None
    kept = store.get(waiting.id)
    assert kept is not None and kept.raw is not None
    assert store.prune(retention, later) == 0  # a stub is pruned once


def _instances() -> list[tuple[str, bytes]]:
    files = sorted(p for p in STUDY.rglob("*") if p.is_file())
    return [(str(p.relative_to(STUDY.parent)), p.read_bytes()) for p in files]


def _uids(data: bytes) -> tuple[str, str, str]:
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_dicom_instances_become_one_study_message(store: Store, converter: Converter) -> None:
    files = _instances()
    assert len({_uids(d)[1] for _, d in files}) == 3, "a 3-series study"
    for _, data in files:
        study, series, sop = _uids(data)
        assert store.add_instance(DicomInstance(study, series, sop, data, peer="CT01"))
        assert not store.add_instance(DicomInstance(study, series, sop, data, peer="CT01"))
    study_uid = _uids(files[0][1])[0]
    assert store.quiet_studies(timedelta(minutes=1)) == []  # still arriving
    assert store.quiet_studies(timedelta(0), utcnow() + timedelta(seconds=1)) == [study_uid]
    receipt = store.commit_study(study_uid)
    assert receipt is not None and not receipt.duplicate
    assert store.commit_study(study_uid) is None  # nothing pending any more
    assert store.quiet_studies(timedelta(0), utcnow() + timedelta(seconds=1)) == []
    stored = store.get(receipt.id)
    assert stored is not None
    assert (stored.summary.format, stored.summary.control_id) == ("dicom", study_uid)
    outcome = process_message(store, converter, receipt.id)
    assert outcome.state == "converted", outcome.issues
    expected = list(converter.convert_files(files))
    assert len(expected) == 1
    assert outcome.output == expected[0].bundle_json


def test_a_calling_ae_title_holding_nul_is_kept_with_u_fffd(store: Store) -> None:
    """A DICOM listener letting in any AE title ("*"): one holding NUL was stored as the
    instance's peer, and on PostgreSQL (its text holds no NUL) the insert failed; the
    sender was told to retry, for ever."""
    _, data = _instances()[0]
    study, series, sop = _uids(data)
    assert store.add_instance(DicomInstance(study, series, sop, data, peer="CT\x0001@10.0.0.9"))
    receipt = store.commit_study(study)
    assert receipt is not None
    stored = store.get(receipt.id)
    assert stored is not None and stored.summary.peer == "CT\ufffd01@10.0.0.9"


def test_dicom_study_grown_later_is_a_new_revision(store: Store) -> None:
    files = _instances()
    uids = [_uids(d) for _, d in files]
    for (study, series, sop), (_, data) in zip(uids[:-1], files[:-1], strict=True):
        store.add_instance(DicomInstance(study, series, sop, data))
    first = store.commit_study(uids[0][0])
    study, series, sop = uids[-1]
    store.add_instance(DicomInstance(study, series, sop, files[-1][1]))
    second = store.commit_study(study)
    assert first is not None and second is not None
    assert (second.revision, second.flagged) == (2, True)
    stored = store.get(second.id)
    assert stored is not None and stored.raw is not None
    assert len(store.study_instances(study)) == len(files)
