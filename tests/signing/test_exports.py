"""gateway.signing's public surface is its ``__all__``, sorted and importable (as
tests/test_exported_members.py checks for the other stages)."""

from __future__ import annotations

import gateway.signing
from tests.test_exported_members import _isort_key


def test_all_is_sorted_and_importable() -> None:
    exported = list(gateway.signing.__all__)
    assert exported == sorted(exported, key=_isort_key)
    for member in exported:
        assert hasattr(gateway.signing, member), member
