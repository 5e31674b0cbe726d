"""``audit_enabled`` read as a boolean from gateway.toml and GATEWAY_AUDIT_ENABLED: the
text "false" once stayed a (truthy) string, so turning the audit off did nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings
from gateway.audit import audit_log
from gateway.errors import ConfigError
from gateway.store import open_store


@pytest.mark.parametrize("where", ["toml", "env"])
def test_audit_enabled_false_turns_the_audit_off(tmp_path: Path, where: str) -> None:
    env = {"GATEWAY_AUDIT_ENABLED": "false"} if where == "env" else {}
    if where == "toml":
        (tmp_path / "gateway.toml").write_text("audit_enabled = false\n")
    settings = Settings.load(home=tmp_path, env=env)
    assert settings.audit_enabled is False
    store = open_store(settings)
    try:
        assert audit_log(store, settings) is None
    finally:
        store.close()
    assert Settings.load(home=tmp_path / "other", env={}).audit_enabled is True
    with pytest.raises(ConfigError):
        Settings.load(home=tmp_path, env={"GATEWAY_AUDIT_ENABLED": "nope"})
