from __future__ import annotations

import pytest

from gateway import Converter, Settings

from .harness import Targets


@pytest.fixture(scope="session")
def fuzz_targets(settings: Settings, converter: Converter) -> Targets:
    return Targets(settings, converter)
