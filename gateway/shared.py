"""Values shared between records, frozen so that no record can change another's.

The mapping engine memoises pure fragments (an organisation, a coding, a staff name)
and the data files (mappings, code tables, the network) are loaded once: the same
objects then appear in many Bundles. They are frozen: :class:`FrozenDict` and
:class:`FrozenList` are ``dict`` and ``list`` subclasses (so orjson, pydantic and every
reader take them as they are) whose every in-place change raises ``TypeError``. An edit
that would leak into other records fails loudly instead.

Copying gives a plain, mutable value (``dict(d)``, ``list(l)``, ``{**d}``, ``l + [x]``,
``copy.copy`` and ``copy.deepcopy``): copy-on-write for whoever needs to change one.

A frozen dict also knows whether any ``reference`` key is inside it (``holds_refs``):
the validator reuses a frozen subtree's checked skeleton, and the reference check skips
subtrees that hold no reference.
"""

from __future__ import annotations

import copy
from typing import Any, NoReturn

__all__ = ["FrozenDict", "FrozenList", "freeze", "is_frozen", "thaw"]


def _frozen(self: object, *args: object, **kwargs: object) -> NoReturn:
    raise TypeError(
        f"{type(self).__name__} is shared between records and read-only; "
        "copy it (dict(x), list(x), copy.deepcopy(x)) to change it"
    )


class FrozenDict(dict[str, Any]):
    """A read-only dict (see the module docstring)."""

    __slots__ = ("holds_refs",)
    holds_refs: bool

    __setitem__ = __delitem__ = __ior__ = _frozen
    clear = pop = popitem = setdefault = update = _frozen

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v, memo) for k, v in self.items()}

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A read-only list (see the module docstring)."""

    __slots__ = ("holds_refs",)
    holds_refs: bool

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _frozen
    append = extend = insert = pop = remove = clear = sort = reverse = _frozen

    def __copy__(self) -> list[Any]:
        return list(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return [copy.deepcopy(v, memo) for v in self]

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def freeze(value: Any) -> Any:
    """``value`` with every dict and list inside it frozen (already frozen parts are
    reused as they are). Strings, numbers and other scalars are immutable already."""
    return _freeze(value)[0]


def _freeze(value: Any) -> tuple[Any, bool]:
    """(frozen value, whether a ``reference`` key is inside it)."""
    kind = type(value)
    if kind is FrozenDict or kind is FrozenList:
        return value, value.holds_refs
    if isinstance(value, dict):
        refs = "reference" in value
        items = {}
        for k, v in value.items():
            if isinstance(v, (dict, list)):
                v, inner = _freeze(v)
                refs = refs or inner
            items[k] = v
        out = FrozenDict(items)
        out.holds_refs = refs
        return out, refs
    if isinstance(value, list):
        refs = False
        frozen_items = []
        for v in value:
            if isinstance(v, (dict, list)):
                v, inner = _freeze(v)
                refs = refs or inner
            frozen_items.append(v)
        frozen = FrozenList(frozen_items)
        frozen.holds_refs = refs
        return frozen, refs
    return value, False


def is_frozen(value: Any) -> bool:
    return type(value) in (FrozenDict, FrozenList)


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of ``value`` (frozen parts included)."""
    return copy.deepcopy(value)
