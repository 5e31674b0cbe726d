"""A study's commit asked again (a PACS or proxy that timed out before the answer and
retries; an operator running ``gateway dicom commit`` twice): the answer is the first
commit's outcome read back from the store (converted with its message, or failed with
the same errors), in the same process, in another process on the same store and after a
restart, and nothing is converted twice. A study never received is still not found.
Runs on SQLite, and on PostgreSQL where one is set (the store fixtures)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import sqlalchemy as sa

from gateway import Converter, Settings
from gateway.cli import main
from gateway.listeners.dicom import CommitResult, DicomIntake, Origin
from gateway.store import Incoming, Store, study_zip, utcnow
from tests.golden.dicom.make_studies import part10, wang_wei

from .dicom_support import NSCH_CTA, converted, dicom_settings, stored_bundle, study_files

STUDY = "2.16.156.10011.99.1.1.3.20260615.17"  # NSCH CTA, 8 instances in 3 series
CHEST = "2.16.156.10011.99.1.4.3.20260610.2"  # 王伟's chest CT, made without PatientID
STOW = Origin("stow", "127.0.0.1:40001")


class NoConversion:
    """The converter of a process that must not convert: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the study was converted again (Converter.{name})")


def _conversions(store: Store, study: str) -> int:
    """The convert outcomes the store holds for the study's messages."""
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM outcomes o JOIN messages m ON m.id = o.message_id "
                    "WHERE m.control_id = :s AND o.stage = 'convert'"
                ),
                {"s": study},
            ).scalar_one()
        )


def _messages(store: Store, study: str) -> list[int]:
    with store.engine.connect() as conn:
        ids = conn.execute(
            sa.text("SELECT id FROM messages WHERE control_id = :s ORDER BY id"), {"s": study}
        ).scalars()
        return [int(i) for i in ids]


def _elsewhere(settings: Settings, store_url: str, study: str) -> CommitResult | None:
    """The commit asked of another process on the same database (a worker, or the
    gateway after a restart): its own Store, nothing in memory, and no conversion."""
    other = Store.open(store_url)
    try:
        return DicomIntake(settings, other, cast(Converter, NoConversion())).commit(study)
    finally:
        other.close()


def _refused_chest() -> list[bytes]:
    """王伟's chest CT (GB18030) without PatientID: its conversion fails, mapping.no-identity."""
    return [part10(wang_wei(CHEST, 1, n, PatientID=None)) for n in (1, 2)]


def test_a_converted_study_committed_again_answers_its_first_outcome_everywhere(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    for _, data in files:
        worker.receive(data, STOW)
    first = worker.commit(STUDY)
    assert first is not None and first.ok and not first.duplicate
    expected = replace(first, duplicate=True)  # that message again, nothing else changed
    assert worker.commit(STUDY) == expected  # the same process: the retry after a timeout
    assert _elsewhere(settings, store_url, STUDY) == expected  # another worker
    store.engine.dispose()  # the gateway stopped: no connection, nothing in memory left
    assert _elsewhere(settings, store_url, STUDY) == expected  # ... and started again
    assert (expected.state, expected.instances, expected.errors) == ("converted", 8, ())
    assert _messages(store, STUDY) == [first.message_id]  # one message, converted once
    assert _conversions(store, STUDY) == 1
    assert stored_bundle(store, expected) == converted(converter, files)


def test_a_refused_study_committed_again_answers_the_same_errors_everywhere(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    for data in _refused_chest():
        worker.receive(data, STOW)
    first = worker.commit(CHEST)
    assert first is not None and not first.ok and not first.duplicate
    assert any(e.startswith("mapping.no-identity: ") for e in first.errors)
    expected = replace(first, duplicate=True)
    assert (expected.state, expected.converting) == ("failed", False)
    assert worker.commit(CHEST) == expected
    assert _elsewhere(settings, store_url, CHEST) == expected
    assert _messages(store, CHEST) == [first.message_id] and _conversions(store, CHEST) == 1
    assert not any("王" in e or "WANG" in e for e in expected.errors)  # no patient data


def test_the_answer_is_the_conversion_whatever_delivery_did_with_the_message_since(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """The outbound path moves a converted message on (queued, delivered...): asked
    again, the commit answers the conversion's outcome, not the delivery's state."""
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    for _, data in study_files(NSCH_CTA):
        worker.receive(data, STOW)
    first = worker.commit(STUDY)
    assert first is not None and first.ok
    for state in ("queued", "delivered"):
        store.set_state(first.message_id, state)
        assert _elsewhere(settings, store_url, STUDY) == replace(first, duplicate=True)


def test_a_study_never_received_is_still_not_found(
    store: Store, tmp_path: Path, converter: Converter
) -> None:
    worker = DicomIntake(dicom_settings(tmp_path), store, converter)
    assert worker.commit(STUDY) is None
    # The same study converted through another channel (`POST /convert`, the CLI) was
    # not received by the listeners: no commit of it to answer.
    for channel in ("api", "cli"):
        store.receive(
            Incoming(study_zip(study_files(NSCH_CTA)), channel, "dicom", control_id=STUDY)
        )
    assert worker.commit(STUDY) is None
    assert _conversions(store, STUDY) == 0


def test_an_instance_arriving_after_the_conversion_makes_a_revision_then_answered_again(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    """Behaviour kept as it was: a late instance reopens the study; the next commit
    makes a new message of every instance and converts it, nothing lost; asked again,
    the commit answers that newest message."""
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    files = study_files(NSCH_CTA)
    *early, (_, late) = files
    for _, data in early:
        worker.receive(data, STOW)
    first = worker.commit(STUDY)
    assert first is not None and first.ok and first.instances == 7
    worker.receive(late, STOW)
    assert worker.pending() == [STUDY]
    second = worker.commit(STUDY)
    assert second is not None and second.ok and not second.duplicate
    assert second.message_id != first.message_id and second.instances == 8
    assert stored_bundle(store, second) == converted(converter, files)  # every instance
    assert _messages(store, STUDY) == [first.message_id, second.message_id]
    worker.receive(late, STOW)  # sent again as it was: not new, nothing reopened
    assert _elsewhere(settings, store_url, STUDY) == replace(second, duplicate=True)
    assert _conversions(store, STUDY) == 2  # one per revision


def test_a_pruned_commit_answers_its_outcome_without_claiming_an_instance_count(
    store: Store, store_url: str, tmp_path: Path, converter: Converter
) -> None:
    settings = dicom_settings(tmp_path)
    worker = DicomIntake(settings, store, converter)
    for _, data in study_files(NSCH_CTA):
        worker.receive(data, STOW)
    first = worker.commit(STUDY)
    assert first is not None and first.ok
    assert store.prune({"converted": timedelta(0)}, utcnow() + timedelta(seconds=1)) == 1
    again = _elsewhere(settings, store_url, STUDY)
    assert again == replace(first, duplicate=True, instances=None)  # unknown, not 0


def test_gateway_dicom_commit_again_exits_as_the_first_did(
    tmp_path: Path, converter: Converter, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each `gateway dicom commit` is a process of its own: asked again, it prints the
    first outcome and exits as the first did (0 converted, 1 failed); 2 only for a
    study never received."""
    settings = dicom_settings(tmp_path)
    store = Store.for_home(tmp_path)
    try:
        worker = DicomIntake(settings, store, converter)
        for _, data in study_files(NSCH_CTA):
            worker.receive(data, STOW)
        for data in _refused_chest():
            worker.receive(data, STOW)
        ok, refused = worker.commit(STUDY), worker.commit(CHEST)
        assert ok is not None and refused is not None
        home = ["--home", str(tmp_path)]
        for study, first, status in ((STUDY, ok, 0), (CHEST, refused, 1)):
            for _ in range(2):
                assert main([*home, "dicom", "commit", study, "--json"]) == status
                printed = orjson.loads(capsys.readouterr().out)
                assert printed["message_id"] == first.message_id
                assert (printed["state"], printed["errors"]) == (first.state, list(first.errors))
            assert main([*home, "dicom", "commit", study]) == status
            out = capsys.readouterr()
            assert f"message {first.message_id}: " in out.out
            assert "(the same instances as before)" in out.out
            for line in first.errors:
                assert f"error: {line}" in out.err
        assert main([*home, "dicom", "commit", "1.2.3.4"]) == 2
        assert "no instance of study 1.2.3.4 was received" in capsys.readouterr().err
        assert _conversions(store, STUDY) == 1 and _conversions(store, CHEST) == 1
    finally:
        store.close()
