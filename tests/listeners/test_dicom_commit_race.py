"""A study's ``$commit`` (STOW-RS, in an API worker process) racing the supervisor's
study completer, and instances arriving while a study is being taken: each study is
converted once, and no stored instance is left out of every converted message (lost).
Two ``Store`` objects on one database stand for the two processes; runs on SQLite
(writers serialised) and on PostgreSQL (concurrent transactions) where one is set."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydicom import dcmread

from gateway import Converter
from gateway.listeners.dicom import CommitResult, DicomIntake, Origin
from gateway.store import Store

from .dicom_support import NSCH_CTA, dicom_settings, study_files

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
    assert completer.pending() == [] and worker.commit(STUDY) is None
    other.close()
