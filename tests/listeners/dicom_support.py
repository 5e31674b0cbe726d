"""Shared pieces of the DICOM listener tests: settings, a store, the sample studies and
what ``gateway convert`` makes of them."""

from __future__ import annotations

from pathlib import Path

from gateway import Converter, Settings
from gateway.listeners.dicom import CommitResult, DicomIntake
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
