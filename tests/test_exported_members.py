"""Each stage's public surface is its package ``__all__``, sorted, and importable."""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "gateway",
    "gateway.intake",
    "gateway.intake.hl7v2",
    "gateway.mapping",
    "gateway.validation",
    "gateway.api",
    "gateway.reports",
    "gateway.intake.cda",
    "gateway.intake.dicom",
    "gateway.store",
    "gateway.listeners",
    "gateway.signing",
    "gateway.policy",
    "gateway.inbound",
]


def _isort_key(name: str) -> tuple[int, str]:
    # The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions.
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_sorted_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_key)
    for member in exported:
        assert hasattr(module, member), f"{name}.{member}"
