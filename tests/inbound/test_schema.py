"""The inbound tables: migration 0005_inbound creates exactly what gateway/inbound
declares; search values and scopes parse as documented."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

import gateway.alerts  # its table joins the metadata too (migration 0008_alerts)
import gateway.console  # its tables are on the store's metadata too
import gateway.inbound
import gateway.policy
import gateway.store
from gateway.inbound import InboundError, PartnerAuth, parse_last_updated, patient_of
from gateway.store import Store, metadata


def test_the_migration_creates_exactly_the_inbound_tables(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'g.db'}")
    try:
        store.upgrade()
        config = Config()  # and back down, as Store.upgrade runs the migrations
        config.set_main_option(
            "script_location", str(Path(gateway.store.__file__).parent / "migrations")
        )
        scripts = ScriptDirectory.from_config(config)
        assert "0005_inbound" in {s.revision for s in scripts.walk_revisions()}
        assert store.revision() == scripts.get_current_head()
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
        assert diff == []
        with store.engine.execution_options(write=True).begin() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003_outbox")
        with store.engine.connect() as conn:
            tables = set(conn.dialect.get_table_names(conn))
        assert not {t for t in tables if t.startswith("inbound_")}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ge2026-06-18", ("ge", datetime(2026, 6, 18), datetime(2026, 6, 19))),
        ("2026-06", ("eq", datetime(2026, 6, 1), datetime(2026, 7, 1))),
        ("2026-12", ("eq", datetime(2026, 12, 1), datetime(2027, 1, 1))),
        ("lt2026-06-18T14:30:00+08:00",
         ("lt", datetime(2026, 6, 18, 6, 30), datetime(2026, 6, 18, 6, 30, 1))),
        ("gt2026-06-18T06:30Z", ("gt", datetime(2026, 6, 18, 6, 30), datetime(2026, 6, 18, 6, 31))),
    ],
)  # fmt: skip
def test_last_updated_values(value: str, expected: tuple[str, datetime, datetime]) -> None:
    assert parse_last_updated(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "2026-02-30", "ne2026-01-01", "2026-06-18T14"])
def test_bad_last_updated_values(value: str) -> None:
    with pytest.raises(InboundError) as caught:
        parse_last_updated(value)
    assert caught.value.code == "inbound.bad-search"


def test_scopes() -> None:
    v1 = PartnerAuth("nsch", "smart", frozenset({"system/*.read"}))
    assert v1.may("read", "Task") and not v1.may("write")
    v2 = PartnerAuth("nsch", "smart", frozenset({"system/*.cruds"}))
    assert v2.may("read", "Patient") and v2.may("write")
    typed = PartnerAuth("nsch", "smart", frozenset({"system/Task.rs"}))
    assert typed.may("read", "Task") and not typed.may("read", "Patient")
    assert not typed.may("write", "Task")


def test_patient_of() -> None:
    assert patient_of({"resourceType": "Task", "for": {"reference": "Patient/p1"}}) == "Patient/p1"
    logical = {"resourceType": "Observation",
               "subject": {"identifier": {"system": "https://fhir.nsch.example.cn/sid/mrn",
                                          "value": "0098765"}}}  # fmt: skip
    assert patient_of(logical) == "https://fhir.nsch.example.cn/sid/mrn|0098765"
    assert patient_of({"resourceType": "Patient", "id": "p1"}) is None
