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
the validator keeps a frozen subtree's checked skeleton on it (``skeleton``) and reuses
it, and the reference check skips subtrees that hold no reference.
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

    __slots__ = ("checked_as", "holds_refs", "skeleton")
    holds_refs: bool
    # What the validator found this value to be (its skeleton as a ``checked_as`` model):
    # a function of the unchanging value alone, so it travels with the value instead of
    # filling a cache.
    checked_as: Any
    skeleton: Any

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
    kind = type(value)
    if kind is FrozenDict or kind is FrozenList:
        return value
    if isinstance(value, dict):
        return _freeze_dict(value)
    if isinstance(value, list):
        return _freeze_list(value)
    return value


# Memoised results are frozen on every memo miss: one copy per container, no temporary
# containers (each would cost the garbage collector as much as the copy itself).


def _freeze_dict(value: dict[str, Any]) -> FrozenDict:
    out = FrozenDict(value)
    refs = "reference" in value
    for key, item in value.items():
        kind = type(item)
        if kind is str:  # most items: nothing to freeze, one test instead of four
            continue
        if kind is FrozenDict or kind is FrozenList:
            refs = refs or item.holds_refs
        elif isinstance(item, dict):
            item = _freeze_dict(item)
            dict.__setitem__(out, key, item)
            refs = refs or item.holds_refs
        elif isinstance(item, list):
            item = _freeze_list(item)
            dict.__setitem__(out, key, item)
            refs = refs or item.holds_refs
    out.holds_refs = refs
    out.checked_as = None
    return out


def _freeze_list(value: list[Any]) -> FrozenList:
    out = FrozenList(value)
    refs = False
    for n, item in enumerate(value):
        kind = type(item)
        if kind is str:
            continue
        if kind is FrozenDict or kind is FrozenList:
            refs = refs or item.holds_refs
        elif isinstance(item, dict):
            item = _freeze_dict(item)
            list.__setitem__(out, n, item)
            refs = refs or item.holds_refs
        elif isinstance(item, list):
            item = _freeze_list(item)
            list.__setitem__(out, n, item)
            refs = refs or item.holds_refs
    out.holds_refs = refs
    return out


def is_frozen(value: Any) -> bool:
    return type(value) in (FrozenDict, FrozenList)


def thaw(value: Any) -> Any:
    """A plain, mutable deep copy of ``value`` (frozen parts included)."""
    return copy.deepcopy(value)
