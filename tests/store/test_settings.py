"""The store's and MLLP listener's settings: read from gateway.toml and GATEWAY_*,
checked, and the retention periods derived from them."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from gateway import Settings
from gateway.errors import ConfigError
from gateway.store import StoreError, open_store, retention


def test_defaults_and_environment(tmp_path: Path) -> None:
    default = Settings.load(tmp_path, env={})
    assert default.database_url is None and default.mllp_port is None
    assert retention(default) == {
        "converted": timedelta(days=30),
        "failed": timedelta(days=90),
        "rejected": timedelta(days=30),
    }
    hash(default)  # settings stay hashable (report variants are cached by them)
    env = {
        "GATEWAY_MLLP_PORT": "2575",
        "GATEWAY_MLLP_IDLE_TIMEOUT": "2.5",
        "GATEWAY_MLLP_TLS_CERT": "tls/cert.pem",
        "GATEWAY_RETENTION_DAYS": "converted=7, received=1",
        "GATEWAY_DATABASE_URL": f"sqlite:///{tmp_path / 'elsewhere.db'}",
    }
    settings = Settings.load(tmp_path, env=env)
    assert (settings.mllp_port, settings.mllp_idle_timeout) == (2575, 2.5)
    assert settings.mllp_tls_cert == tmp_path / "tls" / "cert.pem"
    assert retention(settings) == {"converted": timedelta(days=7)}  # received: never
    store = open_store(settings)
    store.close()
    assert (tmp_path / "elsewhere.db").exists() and not (tmp_path / "gateway.db").exists()


def test_toml_table(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text("mllp_port = 2600\n[retention_days]\nfailed = 365\n")
    settings = Settings.load(tmp_path, env={})
    assert settings.mllp_port == 2600 and settings.retention_days == {"failed": 365}


@pytest.mark.parametrize(
    "env",
    [
        {"GATEWAY_MLLP_PORT": "70000"},
        {"GATEWAY_MLLP_MAX_BYTES": "lots"},
        {"GATEWAY_MLLP_IDLE_TIMEOUT": "-1"},
        {"GATEWAY_RETENTION_DAYS": "converted=-3"},
    ],
)
def test_bad_values_are_refused(tmp_path: Path, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        Settings.load(tmp_path, env=env)


def test_unknown_state_in_retention(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="convertd"):  # at load now, not at retention()
        Settings.load(tmp_path, env={"GATEWAY_RETENTION_DAYS": "convertd=3"})
    settings = replace(Settings.load(tmp_path, env={}), retention_days={"convertd": 3})
    with pytest.raises(ConfigError, match="convertd"):  # settings made another way
        retention(settings)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://gw@db/gateway", "mysql://gw@db/gateway is not a database the gateway can open"),
        ("nonsense", "'nonsense' is not a database the gateway can open"),
        ("foo://bar", "foo://bar is not a database the gateway can open"),
    ],
)
def test_a_database_url_the_gateway_cannot_open_is_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    settings = Settings.load(tmp_path, env={"GATEWAY_DATABASE_URL": url})
    with pytest.raises(ConfigError) as refused:
        open_store(settings)
    line = str(refused.value)
    assert line.startswith(f"error: database_url: {says}") and "\n" not in line
    assert refused.value.code == "config.bad-setting"


def test_a_database_that_does_not_answer_is_one_line_without_its_password(
    tmp_path: Path,
) -> None:
    url = "postgresql+psycopg://gw:s3cret-pw@127.0.0.1:1/gateway"  # port 1: refused at once
    settings = Settings.load(tmp_path, env={"GATEWAY_DATABASE_URL": url})
    with pytest.raises(StoreError) as down:
        open_store(settings)
    line = str(down.value)
    assert line.startswith(
        "error: database_url: cannot use postgresql+psycopg://gw:***@127.0.0.1:1"
    )
    assert "s3cret" not in line and "\n" not in line and down.value.code == "store.unavailable"


def test_a_new_sqlite_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """gateway.db holds every message as received: under the usual umask 022 it (and its
    WAL, which SQLite makes with the database's mode) was world-readable."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        store = open_store(Settings.load(tmp_path, env={}))  # migrated: written, WAL open
        try:
            modes = {
                name: stat.S_IMODE((tmp_path / name).stat().st_mode)
                for name in ("gateway.db", "gateway.db-wal")
            }
        finally:
            store.close()
    finally:
        os.umask(old)
    assert modes == {"gateway.db": 0o600, "gateway.db-wal": 0o600}


def test_a_mistyped_retention_state_is_refused_at_load_naming_the_file(tmp_path: Path) -> None:
    """`convrted = 30` loaded, and was refused only at serve or prune, naming no file."""
    config = tmp_path / "gateway.toml"
    config.write_text("[retention_days]\nconvrted = 30\n")
    with pytest.raises(ConfigError) as caught:
        Settings.load(tmp_path, env={})
    line = caught.value.issue.line()
    assert line.startswith(f"error: {config}: retention_days.convrted: not a message state")
    assert "did you mean 'converted'?" in line
    with pytest.raises(ConfigError) as caught:
        Settings.load(tmp_path / "none", env={"GATEWAY_RETENTION_DAYS": "faild=3"})
    assert "GATEWAY_RETENTION_DAYS" in caught.value.issue.line()
