"""Shared by the partner tests: the demo network PKI (once per session) and settings of
a gateway that is the Lai'an hospital (institution lax2) with those keys."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.datafiles import data_dir
from gateway.signing import make_demo_pki

NETWORK = data_dir("seeds") / "network.yaml"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``gateway keys init``'s folder: ca/, one key and certificate per institution."""
    out = tmp_path_factory.mktemp("pki")
    make_demo_pki(NETWORK, out)
    return out


MakeSettings = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, pki: Path) -> MakeSettings:
    """Settings for a GATEWAY_HOME in tmp_path, institution lax2, the demo keys; keyword
    arguments add GATEWAY_* variables (``institution=None`` leaves it unset)."""

    def make(**extra: str | None) -> Settings:
        env = {"GATEWAY_INSTITUTION": "lax2", "GATEWAY_SIGNING_KEYS": str(pki)}
        for name, value in extra.items():
            key = f"GATEWAY_{name.upper()}"
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return Settings.load(tmp_path / "home", env=env)

    return make


@pytest.fixture
def home(make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GATEWAY_HOME and the settings of make_settings() in the environment, for the
    ``gateway`` command run in-process (gateway.cli.main)."""
    settings = make_settings()
    monkeypatch.setenv("GATEWAY_HOME", str(settings.home))
    monkeypatch.setenv("GATEWAY_INSTITUTION", "lax2")
    monkeypatch.setenv("GATEWAY_SIGNING_KEYS", str(settings.signing_keys))
    return settings.home
