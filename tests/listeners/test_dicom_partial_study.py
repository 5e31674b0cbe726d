"""A study is converted whole or not at all. Instances that arrive after a study was
converted make, at the next commit, a message of every instance, whose conversion
replaces the partner's ImagingStudy. Once retention has pruned the earlier message, its
instances are gone too: a late instance would be committed alone and replace the
partner's study with a part of it. Such a message fails, intake.dicom-partial-study,
unconverted (at commit, at a restart, on reprocess); sent again whole, the study
converts whole. Runs on SQLite, and on PostgreSQL where one is set (the store fixtures).
Studies are pydicom-made, with Chinese patient names (GB 18030, UTF-8)."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import Converter
from gateway.api import TokenSet, create_app
from gateway.cli import main
from gateway.listeners.dicom import CommitResult, DicomIntake, Origin
from gateway.processing import on_converted, process_message
from gateway.store import Incoming, Store, utcnow
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import converted, dicom_settings, stored_bundle
from .test_dicom_stow import TOKEN, Api

STUDY = "2.16.156.10011.99.1.4.3.20260610.7"  # 王伟's chest CT at Lai'an, GB 18030
# (series, description, instances): 6 instances in 3 series
SERIES = [(1, "定位像 Scout", 1), (2, "轴位 1mm 肺窗", 3), (3, "左肺结节靶扫描", 2)]
STOW = Origin("stow", "127.0.0.1:40001")
CODE = "intake.dicom-partial-study"
PATIENT_DATA = ("王", "伟", "WANG", "0012345", "来安", "陳", "大文", "CHAN")

Files = list[tuple[str, bytes]]


def _instance(series: int, number: int, **attrs: str) -> tuple[str, bytes]:
    description = next(d for s, d, _ in SERIES if s == series)
    ds = wang_wei(STUDY, series, number, SeriesDescription=description, **attrs)
    return f"S{series}/IM{number:04d}.dcm", part10(ds)


def _study(**attrs: str) -> Files:
    return [_instance(s, n, **attrs) for s, _, count in SERIES for n in range(1, count + 1)]


LATE = _instance(3, 3)  # a third instance of the nodule series, sent after the commit


def _send(worker: DicomIntake, files: Files) -> None:
    for _, data in files:
        worker.receive(data, STOW)


def _prune_everything(store: Store) -> int:
    """Retention at its shortest: every converted and failed message's content goes."""
    later = utcnow() + timedelta(seconds=1)
    return store.prune({"converted": timedelta(0), "failed": timedelta(0)}, later)


def _converted_then_pruned(worker: DicomIntake, files: Files) -> CommitResult:
    _send(worker, files)
    first = worker.commit(STUDY)
    assert first is not None and first.ok and first.instances == len(files)
    assert _prune_everything(worker.store) == 1
    assert worker.store.study_instances(STUDY) == []  # the instances went with it
    return first


def _refusal(result: CommitResult | None, holds: str, what: str) -> str:
    """The one error of a refused commit, checked: code, study, counts, remedy, tag."""
    assert result is not None and not result.ok and result.state == "failed"
    assert len(result.errors) == 1, result.errors
    error = result.errors[0]
    expected = f"{CODE}: study {STUDY}: message {result.message_id} holds {holds} but {what}"
    assert error.startswith(expected), error
    assert "Send the whole study again (every series), then commit it" in error
    assert error.endswith(" at (0020,000D) StudyInstanceUID")
    assert not any(p in error for p in PATIENT_DATA)  # never patient data
    return error


def _not_converted(store: Store, message_id: int) -> None:
    """Failed with no Bundle: nothing for the outbound path to send."""
    message = store.get(message_id)
    assert message is not None and message.state == "failed"
    current = [o for o in message.outcomes if o.current and o.stage == "convert"]
    assert len(current) == 1 and current[0].output is None
    assert [i["code"] for i in current[0].issues] == [CODE]


def test_a_late_instance_of_a_pruned_study_is_not_converted_alone(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    files = _study()
    _converted_then_pruned(worker, files)
    sent_on: list[int] = []
    undo = on_converted(sent_on.append)  # the outbound path's hook: what goes to partners
    try:
        worker.receive(LATE[1], STOW)
        late = worker.commit(STUDY)
        _refusal(
            late,
            "1 instance",
            "6 of the 6 instances received for it before are not in it (pruned by "
            "retention_days); converted, it would replace the partner's ImagingStudy with "
            "a partial one, so it is not converted",
        )
        assert late is not None and late.instances == 1
        _not_converted(store, late.message_id)
        assert worker.commit(STUDY) == CommitResult(  # asked again: the same answer
            STUDY, late.message_id, 1, False, True, late.errors
        )
        # The remedy the error names: the PACS sends the whole study again.
        _send(worker, files)
        whole = worker.commit(STUDY)
        assert whole is not None and whole.ok and whole.instances == 7
        assert stored_bundle(store, whole) == converted(converter, [*files, LATE])
        assert sent_on == [whole.message_id]  # the partial message never went out
    finally:
        undo()


def test_part_of_the_study_sent_again_is_still_refused(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    """The known instances are counted one by one: a resend lacking a series (here the
    nodule series) is as partial as the late instance alone."""
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    files = _study()
    _converted_then_pruned(worker, files)
    worker.receive(LATE[1], STOW)
    _refusal(worker.commit(STUDY), "1 instance", "6 of the 6 instances")
    _send(worker, [f for f in files if not f[0].startswith("S3/")])
    again = worker.commit(STUDY)
    # 7 known (the 6 converted and the late one); this message: the late one and 4.
    error = _refusal(again, "5 instances", "2 of the 7 instances received for it before")
    assert "(pruned by retention_days)" not in error  # the refused message still holds its own
    assert again is not None
    _not_converted(store, again.message_id)


def test_pruning_an_earlier_revision_loses_nothing_and_refuses_nothing(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    """Instances are kept by the study's newest message: pruning an older revision
    leaves them, and the next late instance converts with every one of them."""
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    *early, last = _study()
    _send(worker, early)
    first = worker.commit(STUDY)
    worker.receive(last[1], STOW)
    second = worker.commit(STUDY)
    assert first is not None and second is not None and first.ok and second.ok
    newest = store.get(second.message_id)
    assert newest is not None
    assert store.prune({"converted": timedelta(0)}, newest.summary.received_at) == 1
    assert len(store.study_instances(STUDY)) == 6  # still held by the second message
    worker.receive(LATE[1], STOW)
    third = worker.commit(STUDY)
    assert third is not None and third.ok and third.instances == 7, third
    assert stored_bundle(store, third) == converted(converter, [*early, last, LATE])


def test_a_study_pruned_before_its_instances_were_kept_cannot_be_known(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    """A study converted and pruned before the store kept each study's instances
    (migration 0010_dicom_known): how many the partner holds cannot be known, so a late
    instance is not converted alone either; the whole study sent again is."""
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    files = _study()
    _send(worker, files)
    first = worker.commit(STUDY)
    assert first is not None and first.ok
    with store.engine.begin() as conn:  # as a store upgraded from 0009 holds it
        conn.execute(sa.text("DELETE FROM dicom_known_studies"))
    assert _prune_everything(store) == 1
    worker.receive(LATE[1], STOW)
    late = worker.commit(STUDY)
    _refusal(
        late,
        "1 instance",
        f"its message {first.message_id} was pruned (retention_days) before the gateway "
        "kept the instances of each study, so which instances it held cannot be known",
    )
    _send(worker, files)
    whole = worker.commit(STUDY)
    assert whole is not None and whole.ok and whole.instances == 7


def test_a_commit_left_unconverted_by_a_stopped_process_is_checked_at_restart(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """The process took the late instance into a message and stopped before converting
    it: the restarted completer's resume refuses it as the commit would have."""
    settings = dicom_settings(tmp_path)
    _converted_then_pruned(DicomIntake(settings, store, converter), _study())
    DicomIntake(settings, store, converter).receive(LATE[1], STOW)
    receipt = store.commit_study(STUDY)  # taken; the process stops here
    assert receipt is not None
    restarted = Store.open(store_url)
    try:
        assert DicomIntake(settings, restarted, converter).resume() == 1
    finally:
        restarted.close()
    _not_converted(store, receipt.id)


def test_reprocessing_never_converts_a_partial_study(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    """`gateway messages reprocess` (after a mapping fix) converts a stored message
    again: neither the refused message nor an older revision of the study (fewer
    instances than the partner holds) is converted. 陳大文's study, UTF-8."""
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    *early, last = _study(SpecificCharacterSet="ISO_IR 192", PatientName="CHAN^TAI MAN=陳^大文=")
    _send(worker, early)
    older = worker.commit(STUDY)
    worker.receive(last[1], STOW)
    newer = worker.commit(STUDY)
    assert older is not None and newer is not None and older.ok and newer.ok
    again = process_message(store, converter, older.message_id)
    assert again.state == "failed" and again.output is None
    [issue] = again.issues
    assert issue["code"] == CODE and issue["location"] == "(0020,000D) StudyInstanceUID"
    assert issue["message"].startswith(
        f"study {STUDY}: message {older.message_id} holds 5 instances but 1 of the 6 "
        "instances received for it before are not in it; "
    )
    assert not any(p in issue["message"] for p in PATIENT_DATA)
    known = store.known_study(STUDY)
    assert known is not None and known.message_id == newer.message_id  # still the newest
    assert process_message(store, converter, newer.message_id).state == "converted"
    # The refused message of a pruned study, reprocessed: refused again.
    assert _prune_everything(store) == 2  # the older message's reprocess failed it
    worker.receive(LATE[1], STOW)
    late = worker.commit(STUDY)
    assert late is not None and not late.ok
    reprocessed = process_message(store, converter, late.message_id)
    assert [i["code"] for i in reprocessed.issues] == [CODE]
    _not_converted(store, late.message_id)


def test_the_cli_and_the_api_say_why(
    tmp_path: Path, converter: Converter, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway dicom commit` exits 1 with the error line, `$commit` answers 422 with
    it, `gateway messages show` lists it: as for any conversion that failed."""
    settings = dicom_settings(tmp_path)
    store = Store.for_home(tmp_path)
    try:
        worker = DicomIntake(settings, store, converter)
        _converted_then_pruned(worker, _study())
        worker.receive(LATE[1], STOW)
        home = ["--home", str(tmp_path)]
        assert main([*home, "dicom", "commit", STUDY]) == 1
        out = capsys.readouterr()
        assert out.out.startswith("message ") and ": 1 instances, failed" in out.out
        [line] = out.err.splitlines()
        assert line.startswith(f"error: {CODE}: study {STUDY}: message ")
        message_id = int(out.out.split()[1].rstrip(":"))
        app = create_app(settings, converter, TokenSet([TOKEN]))
        app.state.dicom_intake = worker
        answer = Api(app, worker).post(f"/dicomweb/studies/{STUDY}/$commit")
        assert answer.status_code == 422, answer.text
        body = answer.json()
        assert (body["message"], body["state"], body["converted"]) == (message_id, "failed", False)
        assert body["errors"] == [line.removeprefix("error: ")]
        assert main([*home, "messages", "show", str(message_id)]) == 0
        shown = capsys.readouterr().out
        assert CODE in shown and "(0020,000D) StudyInstanceUID" in shown
    finally:
        store.close()


def test_instances_taken_by_two_processes_at_once_are_all_kept(store_url: str) -> None:
    """Two workers adding to one study's known instances at once: the second waits for
    the first's transaction and adds to what it wrote (no lost update, PostgreSQL's
    READ COMMITTED included)."""
    first, second = Store.open(store_url), Store.open(store_url)
    sets = [frozenset({f"{STUDY}.{series}.1"}) for series in (1, 2, 3)]
    message = first.receive(Incoming(b"PK", "stow", "dicom", control_id=STUDY)).id
    first.remember_study(STUDY, sets[0], message)
    other = threading.Thread(target=second.remember_study, args=(STUDY, sets[2], message))
    try:
        with first.engine.execution_options(write=True).begin() as conn:
            first.remember_study(STUDY, sets[1], message, conn)  # not committed yet
            other.start()
            _until_waiting(first)  # the second is at the study's row, waiting
        other.join(60)
        known = first.known_study(STUDY)
        assert known is not None and known.sop_uids == sets[0] | sets[1] | sets[2]
    finally:
        first.close()
        second.close()


def _until_waiting(store: Store) -> None:
    """Return once another connection waits for a lock (PostgreSQL). SQLite: at once;
    the other's write transaction cannot begin before this one ends."""
    if store.dialect != "postgresql":
        return
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    for _ in range(2000):
        with store.engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        threading.Event().wait(0.005)
    raise AssertionError("the second worker never reached the study's row")
