"""ValueSet expansion, the simple cases only, from the loaded definitions.

A ValueSet expands here when it is made of ``compose.include`` entries naming a system
with listed concepts, a whole CodeSystem the definitions hold completely, an ``is-a``
filter on such a CodeSystem, or other ValueSets that expand (``exclude`` alike). Anything
else (SNOMED CT, LOINC, other filters, a CodeSystem not held) leaves the ValueSet
unexpanded: the validator then reports nothing against it but an information issue,
never a false alarm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._definitions import Definitions

__all__ = ["Expansion", "expand"]


@dataclass(frozen=True, slots=True)
class Expansion:
    """Codes by system; ``codes`` holds every code whatever its system (for ``code``)."""

    by_system: dict[str, frozenset[str]]
    codes: frozenset[str]

    def has(self, system: str | None, code: str) -> bool:
        if system is None:
            return code in self.codes
        return code in self.by_system.get(system, frozenset())


class _Unexpandable(Exception):
    pass


def _concepts(concepts: list[dict[str, Any]], out: dict[str, list[str]], parent: str = "") -> None:
    """code → its ancestors' codes (hierarchy by nesting)."""
    for concept in concepts:
        code = concept.get("code")
        if isinstance(code, str):
            out[code] = [parent] if parent else []
            _concepts(concept.get("concept") or [], out, code)


def _hierarchy(defs: Definitions, system: str) -> dict[str, list[str]]:
    cs = defs.get(system)
    if not cs or cs.get("resourceType") != "CodeSystem" or cs.get("content") != "complete":
        raise _Unexpandable(system)
    table: dict[str, list[str]] = {}
    _concepts(cs.get("concept") or [], table)
    return table


def _descendants(table: dict[str, list[str]], root: str) -> set[str]:
    out = {root} if root in table else set()
    changed = True
    while changed:
        changed = False
        for code, parents in table.items():
            if code not in out and any(p in out for p in parents):
                out.add(code)
                changed = True
    return out


def _include(defs: Definitions, part: dict[str, Any], seen: frozenset[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for url in part.get("valueSet") or []:
        inner = _expand(defs, str(url), seen)
        for inner_system, inner_codes in inner.by_system.items():
            out.setdefault(inner_system, set()).update(inner_codes)
    system = part.get("system")
    if not isinstance(system, str):
        if not part.get("valueSet"):
            raise _Unexpandable("include without system")
        return out
    codes: set[str] = set()
    if part.get("concept"):
        codes = {str(c["code"]) for c in part["concept"] if isinstance(c.get("code"), str)}
    elif part.get("filter"):
        table = _hierarchy(defs, system)
        for filt in part["filter"]:
            if filt.get("property") != "concept" or filt.get("op") not in ("is-a", "descendent-of"):
                raise _Unexpandable("filter")
            found = _descendants(table, str(filt.get("value")))
            if filt.get("op") == "descendent-of":
                found.discard(str(filt.get("value")))
            codes |= found
    else:
        codes = set(_hierarchy(defs, system))
    out.setdefault(system, set()).update(codes)
    return out


def _expand(defs: Definitions, url: str, seen: frozenset[str]) -> Expansion:
    if url in seen:
        raise _Unexpandable("cycle")
    vs = defs.get(url)
    if not vs or vs.get("resourceType") != "ValueSet":
        raise _Unexpandable(url)
    compose = vs.get("compose") or {}
    if not compose.get("include"):
        raise _Unexpandable("no compose")
    by_system: dict[str, set[str]] = {}
    for part in compose["include"]:
        for system, codes in _include(defs, part, seen | {url}).items():
            by_system.setdefault(system, set()).update(codes)
    for part in compose.get("exclude") or []:
        for system, codes in _include(defs, part, seen | {url}).items():
            by_system.get(system, set()).difference_update(codes)
    frozen = {s: frozenset(c) for s, c in by_system.items()}
    return Expansion(frozen, frozenset().union(*frozen.values()) if frozen else frozenset())


_CACHE: dict[tuple[int, str], Expansion | None] = {}


def expand(defs: Definitions, url: str) -> Expansion | None:
    """The ValueSet's codes, or None when it cannot be expanded here."""
    key = (id(defs), url.split("|", 1)[0])
    if key not in _CACHE:
        try:
            _CACHE[key] = _expand(defs, key[1], frozenset())
        except (_Unexpandable, KeyError, TypeError):
            _CACHE[key] = None
    return _CACHE[key]
