"""A study's ``$commit`` (STOW-RS, in an API worker process) racing the supervisor's
study completer, and instances arriving while a study is being taken: each study is
converted once, and no stored instance is left out of every converted message (lost).
Two ``Store`` objects on one database stand for the two processes; runs on SQLite
(writers serialised) and on PostgreSQL (concurrent transactions) where one is set."""

from __future__ import annotations

import dataclasses
import io
import threading
import zipfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from pydicom import dcmread

from gateway import Converter
from gateway.cli import main
from gateway.listeners.dicom import CommitResult, DicomIntake, Origin
from gateway.store import Store, utcnow
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import (
    NSCH_CTA,
    another_converting,
    dicom_settings,
    send_again_as_first_sent,
    study_files,
    taken_by_another,
)

STUDY = "2.16.156.10011.99.1.1.3.20260615.17"
STOW = Origin("stow", "127.0.0.1:40001")


def _sop(data: bytes) -> str:
    return str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _in_messages(store: Store) -> set[str]:
    """SOP Instance UIDs inside the study's converted messages."""
    found: set[str] = set()
    with store.engine.connect() as conn:
        ids = conn.execute(
            sa.text("SELECT id FROM messages WHERE control_id = :s AND state = 'converted'"),
            {"s": STUDY},
        ).scalars()
        for message_id in list(ids):
            raw = store.raw(int(message_id))
            assert raw is not None and raw[0] is not None
            with zipfile.ZipFile(io.BytesIO(raw[0])) as archive:
                found |= {_sop(archive.read(n)) for n in archive.namelist()}
    return found


def _conversions(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM outcomes o JOIN messages m ON m.id = o.message_id "
                    "WHERE m.control_id = :s AND o.stage = 'convert'"
                ),
                {"s": STUDY},
            ).scalar_one()
        )


def test_an_instance_stored_while_its_study_is_taken_is_never_lost(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    *first, (_, late) = files
    for _, data in first:
        worker.receive(data, STOW)
    other = Store.open(store_url)  # the supervisor's process, its own connections
    arriving = DicomIntake(settings, other, converter)
    stored = threading.Event()

    def receive_late() -> None:
        arriving.receive(late, STOW)
        stored.set()

    def between(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        # The study's rows are read; before they are marked taken, the last instance
        # arrives through the other process (committed at once where the database
        # lets it: PostgreSQL; SQLite's writer lock makes it wait for the commit).
        if sql.lstrip().upper().startswith("UPDATE DICOM_INSTANCES") and not started:
            started.append(threading.Thread(target=receive_late))
            started[0].start()
            stored.wait(2.0)

    started: list[threading.Thread] = []
    sa.event.listen(store.engine, "before_cursor_execute", between)
    try:
        result = worker.commit(STUDY)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", between)
    started[0].join(30)
    assert result is not None and result.ok
    worker.commit(STUDY)  # the next commit (the completer's, after its quiet period)
    every = {_sop(data) for _, data in files}
    assert _in_messages(store) == every  # the late instance is in a converted message
    other.close()


def test_commit_racing_the_completer_converts_the_study_once(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path)
    lock = threading.Lock()  # one converter object shared by the two "processes"
    worker = DicomIntake(settings, store, converter, lock)
    for _, data in study_files(NSCH_CTA):
        worker.receive(data, STOW)
    other = Store.open(store_url)
    completer = DicomIntake(settings, other, converter, lock)
    go = threading.Barrier(2)
    results: dict[str, CommitResult | None] = {}

    def take(name: str, intake: DicomIntake) -> None:
        go.wait()
        results[name] = intake.commit(STUDY)

    threads = [
        threading.Thread(target=take, args=("worker", worker)),
        threading.Thread(target=take, args=("completer", completer)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    taken = [r for r in results.values() if r is not None and not r.duplicate]
    assert len(taken) == 1 and taken[0].ok  # one took it and converted it
    assert _conversions(store) == 1  # converted once
    assert _in_messages(store) == {_sop(d) for _, d in study_files(NSCH_CTA)}
    assert completer.pending() == []
    assert worker.commit(STUDY) == dataclasses.replace(taken[0], duplicate=True)  # asked again
    other.close()


# A duplicate commit meeting another process's conversion of the same instances (held
# in the middle by HeldConverter): its answer is that conversion's outcome, or
# "converting" while there is none yet, never a failure it does not have.


def test_a_duplicate_commit_while_the_other_converts_says_converting_not_failed(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="0.2")
    worker = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    for _, data in files:
        worker.receive(data, STOW)
    with another_converting(settings, store_url, converter, STUDY) as results:
        send_again_as_first_sent(worker, files[0][1], STOW)
        result = worker.commit(STUDY)  # the other is held: no outcome within 0.2 s
    first = results["other"]
    assert first is not None and first.ok and not first.duplicate
    assert result is not None and result.duplicate
    assert result.message_id == first.message_id and result.instances == len(files)
    assert not result.ok and result.errors == ()  # no outcome yet: not a failure...
    assert (result.state, result.converting) == ("converting", True)  # ...but converting
    assert _conversions(store) == 1  # the duplicate converted nothing


def test_a_duplicate_commit_answers_the_other_conversion_once_it_ends(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="60")
    worker = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    for _, data in files:
        worker.receive(data, STOW)
    with another_converting(
        settings, store_url, converter, STUDY, release_on_poll=store
    ) as results:  # the other ends while the duplicate waits
        send_again_as_first_sent(worker, files[0][1], STOW)
        result = worker.commit(STUDY)
    first = results["other"]
    assert first is not None and first.ok
    assert result is not None and result.duplicate and result.message_id == first.message_id
    assert result.ok and result.errors == ()  # the other's outcome, not "received"
    assert result.state == "converted"
    # Later, the same instances again: that conversion's outcome at once.
    send_again_as_first_sent(worker, files[0][1], STOW)
    later = worker.commit(STUDY)
    assert later is not None and later.message_id == first.message_id
    assert (later.state, later.ok, later.duplicate) == ("converted", True, True)
    assert _conversions(store) == 1


def test_a_duplicate_commit_of_a_failed_conversion_answers_its_errors(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="60")
    worker = DicomIntake(settings, store, converter)
    # 王伟's chest CT without PatientID: its conversion fails (mapping.no-identity).
    study = "2.16.156.10011.99.1.4.3.20260610.2"
    instances = [part10(wang_wei(study, 1, n, PatientID=None)) for n in (1, 2)]
    for data in instances:
        worker.receive(data, STOW)
    with another_converting(
        settings, store_url, converter, study, release_on_poll=store
    ) as results:
        send_again_as_first_sent(worker, instances[0], STOW)
        result = worker.commit(study)
    first = results["other"]
    assert first is not None and not first.ok
    assert any(e.startswith("mapping.no-identity: ") for e in first.errors)
    assert result is not None and result.duplicate and result.message_id == first.message_id
    assert (result.ok, result.errors) == (False, first.errors)  # the other's errors
    assert (result.state, result.converting) == ("failed", False)
    assert not any("王" in e or "WANG" in e for e in result.errors)  # no patient data


def test_the_completer_does_not_wait_for_a_study_another_process_converts(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """A sweep meeting a study being converted elsewhere answers "converting" at once,
    whatever dicom_commit_wait_seconds: one study must not hold up the others."""
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="600")
    completer = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    for _, data in files:
        completer.receive(data, STOW)
    with another_converting(settings, store_url, converter, STUDY) as results:
        send_again_as_first_sent(completer, files[0][1], STOW)
        [swept] = completer.sweep(now=utcnow() + timedelta(hours=2))  # returns: not held
    first = results["other"]
    assert first is not None and first.ok and swept.message_id == first.message_id
    assert (swept.state, swept.duplicate) == ("converting", True)


def test_a_commit_finding_every_instance_taken_awaits_the_conversion_under_way(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """The loser that comes second (SQLite orders the two by its writer lock) finds
    nothing pending: the study's message, still being converted, is its answer, not
    "nothing waiting"."""
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="60")
    worker = DicomIntake(settings, store, converter)
    for _, data in study_files(NSCH_CTA):
        worker.receive(data, STOW)
    with another_converting(
        settings, store_url, converter, STUDY, release_on_poll=store
    ) as results:
        result = worker.commit(STUDY)
    first = results["other"]
    assert first is not None and first.ok
    assert result is not None and result.ok and result.message_id == first.message_id
    assert (result.state, result.duplicate, result.instances) == ("converted", True, 8)
    assert worker.commit(STUDY) == result  # converted: asked again, the same answer
    assert _conversions(store) == 1


# PostgreSQL alone: SQLite's writer lock lets no commit read while another takes the study
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_commit_reading_the_instances_before_the_other_took_them_awaits_its_outcome(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """PostgreSQL: both read the pending instances; the other inserts the message first
    and is converting it when this one's insert finds it (the duplicate of the race)."""
    settings = dicom_settings(tmp_path, dicom_commit_wait_seconds="0.2")
    worker = DicomIntake(settings, store, converter)
    for _, data in study_files(NSCH_CTA):
        worker.receive(data, STOW)
    other: list[Any] = []

    def between(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        # This commit has read the instances; the other takes them and starts converting.
        if "dedup_key" in sql and not other:
            other.extend(taken_by_another(settings, store_url, converter, STUDY))

    sa.event.listen(store.engine, "before_cursor_execute", between)
    try:
        result = worker.commit(STUDY)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", between)
        if other:
            other[0].release.set()
            other[2].join(120)
            other[3].close()
    first = other[1]["other"]
    assert first is not None and first.ok and not first.duplicate
    assert result is not None and result.duplicate and result.message_id == first.message_id
    assert not result.ok and result.errors == ()
    assert (result.state, result.converting) == ("converting", True)
    assert _conversions(store) == 1
    assert _in_messages(store) == {_sop(d) for _, d in study_files(NSCH_CTA)}


def test_gateway_dicom_commit_exits_3_while_another_process_converts_the_study(
    tmp_path: Path, converter: Converter, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gateway dicom commit` meeting the completer's conversion: exit 3 and
    "converting", not exit 1 "failed"."""
    settings = dicom_settings(tmp_path)
    store = Store.for_home(tmp_path)
    try:
        for _, data in study_files(NSCH_CTA):
            DicomIntake(settings, store, converter).receive(data, STOW)
        url = f"sqlite:///{tmp_path / 'gateway.db'}"
        with another_converting(settings, url, converter, STUDY) as results:
            home = ["--home", str(tmp_path)]
            with pytest.MonkeyPatch.context() as env:
                env.setenv("GATEWAY_DICOM_COMMIT_WAIT_SECONDS", "0")
                code = main([*home, "dicom", "commit", STUDY, "--json"])
    finally:
        store.close()
    first = results["other"]
    assert first is not None and first.ok
    out = capsys.readouterr()
    assert code == 3, out.err  # not 1 "failed", nor 2 "nothing pending"
    printed = orjson.loads(out.out)
    assert (printed["state"], printed["message_id"]) == ("converting", first.message_id)
