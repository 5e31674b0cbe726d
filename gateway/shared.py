"""Mapped values shared between Bundles.

The mapping engine memoises pure fragments (an organisation, a coding, a staff name):
the same dict objects then appear in many Bundles. They are registered here and are
never changed afterwards. Later stages use that: the validator reuses a shared
subtree's checked skeleton, and the reference check skips it (a pure fragment cannot
hold a reference).
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_shared", "share"]

_SHARED: dict[int, Any] = {}  # id → the object itself (keeps the id from being reused)
_LIMIT = 200_000


def share(value: Any) -> None:
    """Register ``value`` and every dict and list inside it as shared (read-only)."""
    if len(_SHARED) >= _LIMIT:
        _SHARED.clear()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            _SHARED[id(node)] = node
            stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            _SHARED[id(node)] = node
            stack.extend(v for v in node if isinstance(v, (dict, list)))


def is_shared(value: Any) -> bool:
    return _SHARED.get(id(value)) is value
