"""Shared pieces of the DICOM listener tests: settings, a store, the sample studies and
what ``gateway convert`` makes of them."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from pydicom import dcmread

from gateway import Converter, Settings
from gateway.listeners.dicom import CommitResult, DicomIntake, Origin
from gateway.store import Store

REPO = Path(__file__).resolve().parents[2]
# The two 3-series studies `make demo` converts: headers only, GB18030 and UTF-8.
NSCH_CTA = REPO / "examples" / "imaging" / "nsch_cta.study"
LAX2_HEAD = REPO / "examples" / "imaging" / "lax2_ct_head.study"
SCU_AE = "MODALITY1"


def study_files(folder: Path) -> list[tuple[str, bytes]]:
    return [(str(p), p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()]


def dicom_settings(home: Path, **env: str) -> Settings:
    values = {"GATEWAY_DICOM_ALLOWED_AES": SCU_AE, "GATEWAY_DICOM_QUIET_SECONDS": "3600"}
    values.update({f"GATEWAY_{k.upper()}": v for k, v in env.items()})
    return Settings.load(home=home, env=values)


def intake_for(settings: Settings, converter: Converter, store: Store | None = None) -> DicomIntake:
    """The intake over ``store`` (the listener tests' fixture: SQLite, and PostgreSQL
    where one is configured), else over the home's SQLite store."""
    return DicomIntake(settings, store or Store.for_home(settings.home), converter)


def converted(converter: Converter, files: list[tuple[str, bytes]]) -> bytes:
    """The one Bundle `gateway convert` makes of a study's files (Converter.convert_files)."""
    records = list(converter.convert_files(files))
    assert len(records) == 1 and records[0].ok, [i.line() for r in records for i in r.issues]
    assert records[0].bundle_json is not None
    return records[0].bundle_json


def stored_bundle(store: Store, result: CommitResult) -> bytes:
    """The converted Bundle the store keeps for a committed study."""
    message = store.get(result.message_id)
    assert message is not None and message.state == "converted", message
    current = [o for o in message.outcomes if o.current and o.stage == "convert"]
    assert len(current) == 1 and current[0].output is not None
    return current[0].output


def refuse_writes(store: Store) -> None:
    """Make the database refuse new DICOM instances, as a full disk or a lost server
    would (a trigger: the insert fails inside the database)."""
    with store.engine.begin() as conn:
        if store.dialect == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER disk_full BEFORE INSERT ON dicom_instances "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION full_disk() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'could not extend file: No space left on device'; END $$ "
                "LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER disk_full BEFORE INSERT ON dicom_instances "
                "FOR EACH ROW EXECUTE FUNCTION full_disk()"
            )


def allow_writes(store: Store) -> None:
    with store.engine.begin() as conn:
        on = "" if store.dialect == "sqlite" else " ON dicom_instances"
        conn.exec_driver_sql(f"DROP TRIGGER disk_full{on}")


class HeldConverter:
    """A converter whose conversions wait, once started, until ``release`` is set: the
    process that took a study, held in the middle of converting it (``entered`` says it
    is there), so a second caller meets it deterministically, without sleeping."""

    def __init__(self, converter: Converter) -> None:
        self._converter = converter
        self.entered = threading.Event()
        self.release = threading.Event()

    def convert(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.release.wait(60), "the held conversion was never released"
        return self._converter.convert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._converter, name)


def taken_by_another(
    settings: Settings, store_url: str, converter: Converter, study_uid: str
) -> tuple[HeldConverter, dict[str, CommitResult | None], threading.Thread, Store]:
    """Another process (its own Store on the same database) commits ``study_uid`` and is
    held inside its conversion when this returns; its result lands in ``results["other"]``
    once released. Set ``held.release``, join the thread and close the store after."""
    held = HeldConverter(converter)
    other = Store.open(store_url)
    intake = DicomIntake(settings, other, cast(Converter, held))
    results: dict[str, CommitResult | None] = {}
    thread = threading.Thread(target=lambda: results.update(other=intake.commit(study_uid)))
    thread.start()
    assert held.entered.wait(60), "the other process never started converting"
    return held, results, thread, other


@contextmanager
def another_converting(
    settings: Settings,
    store_url: str,
    converter: Converter,
    study_uid: str,
    *,
    release_on_poll: Store | None = None,
) -> Iterator[dict[str, CommitResult | None]]:
    """:func:`taken_by_another` for the block: the other process is held inside its
    conversion (with ``release_on_poll``, until that store first reads a message's state:
    :func:`release_on_first_poll`), then released, joined and closed; its result is in
    the yielded ``results["other"]`` after the block."""
    held, results, thread, other = taken_by_another(settings, store_url, converter, study_uid)
    undo = release_on_first_poll(release_on_poll, held) if release_on_poll is not None else None
    try:
        yield results
    finally:
        if undo is not None:
            undo()
        held.release.set()
        thread.join(120)
        other.close()


def send_again_as_first_sent(intake: DicomIntake, data: bytes, origin: Origin) -> None:
    """An instance sent again with other bytes (a corrected header), then as first sent:
    its study is pending again with the very instances already taken, so the next commit
    of it is a duplicate of that message (as a commit that read the instances before the
    other process marked them taken is, on PostgreSQL)."""
    ds = dcmread(io.BytesIO(data))
    ds.ImageComments = "resent"
    changed = io.BytesIO()
    ds.save_as(changed, enforce_file_format=True)
    intake.receive(changed.getvalue(), origin)
    intake.receive(data, origin)


def release_on_first_poll(store: Store, held: HeldConverter) -> Callable[[], None]:
    """Release the held conversion once ``store`` first reads a message's state (the
    duplicate commit has begun waiting for the outcome); returns the undo."""

    def polled(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        if sql.lstrip().upper().startswith("SELECT MESSAGES.STATE"):
            held.release.set()

    sa.event.listen(store.engine, "before_cursor_execute", polled)
    return lambda: sa.event.remove(store.engine, "before_cursor_execute", polled)
