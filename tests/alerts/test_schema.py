"""Migration 0008_alerts creates exactly the table gateway/alerts declares, and goes back."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import gateway.alerts
import gateway.audit
import gateway.inbound
import gateway.policy
import gateway.store
from gateway.store import Store, metadata


def test_the_migration_creates_exactly_the_alert_table(store: Store) -> None:
    assert gateway.alerts.alert_state.name in metadata.tables
    assert store.revision() == "0018_partner_pauses"
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    config = Config()
    config.set_main_option(
        "script_location", str(Path(gateway.store.__file__).parent / "migrations")
    )
    with store.engine.execution_options(write=True).begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0007_console")
    with store.engine.connect() as conn:
        assert "alert_state" not in set(conn.dialect.get_table_names(conn))
    store.upgrade()
    assert store.revision() == "0018_partner_pauses"
