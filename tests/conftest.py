"""Shared fixtures: a converter on the demo network, and the public sample corpus."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from gateway import Converter, Settings

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("interpreted", "compiled", "ceiling")  # GATEWAY_MAPPING_ENGINE's values
CORPUS = REPO.parent / "shared" / "corpus"


def compiled(module: ModuleType) -> bool:
    """Whether ``module`` runs compiled (a mypyc build: its extension module beside the
    .py shadows it). Its functions are then bound early and its classes native: a test
    that instruments them by monkeypatching cannot run against it."""
    return not (module.__file__ or "").endswith(".py")


def pytest_configure(config: pytest.Config) -> None:
    # The compiled mappings' code cache goes to a folder of this run, not the user's
    # ~/.cache (subprocesses started by tests inherit it); tests of the cache set their own.
    if "GATEWAY_MAPPING_CACHE" not in os.environ:
        folder = tempfile.mkdtemp(prefix="gateway-mapping-cache-")
        os.environ["GATEWAY_MAPPING_CACHE"] = folder
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("gateway-home")
    return Settings.load(home=home, env={})


@pytest.fixture(scope="session")
def converter(settings: Settings) -> Converter:
    return Converter(settings)


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Converter]]:
    """One converter per mapping engine, each with its own code cache, on the same
    settings (a module that compares them, or runs its cases on each)."""
    settings = Settings.load(home=tmp_path_factory.mktemp("engines-home"), env={})
    cache = tmp_path_factory.mktemp("engines-cache")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEWAY_MAPPING_CACHE", str(cache))
        for engine in ENGINES:
            mp.setenv("GATEWAY_MAPPING_ENGINE", engine)
            out[engine] = Converter(settings)
    yield out


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not (CORPUS / "SOURCES.md").is_file():
        pytest.skip(f"the shared sample corpus is not beside the checkout ({CORPUS})")
    return CORPUS
