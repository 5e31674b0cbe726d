"""Shared fixtures: a converter on the demo network, and the public sample corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Converter, Settings

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("gateway-home")
    return Settings.load(home=home, env={})


@pytest.fixture(scope="session")
def converter(settings: Settings) -> Converter:
    return Converter(settings)


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "SOURCES.md").is_file():
        pytest.skip(f"the shared sample corpus is not beside the checkout ({CORPUS})")
    return CORPUS
