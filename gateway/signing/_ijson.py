"""I-JSON's one rule a signature depends on (RFC 7493 2.3; RFC 8785 canonicalises
I-JSON): no object holds a member name twice. Parsers keep the first or the last value
of such a name (orjson the last), so the value that was signed and the value another
reader sees could differ. orjson cannot say; the standard library's parser, read once
more with a hook, can.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["JsonPath", "duplicate_member"]

JsonPath = tuple[str | int, ...]  # member names and array indexes from the root

_TWICE = "\x00twice"  # marks, in the second reading, the object that has a name twice


class _Twice(Exception):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Twice
    return out


def _marked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found and _TWICE not in found:
            found[_TWICE] = key
        found[key] = value
    return found


def duplicate_member(data: bytes | str) -> tuple[JsonPath, str] | None:
    """(path to the object, the name) of a member name held twice in one object of the
    JSON text ``data``; None when there is none, or when the standard library cannot
    read what orjson did (its nesting limit is not the gateway's rule)."""
    try:
        json.loads(data, object_pairs_hook=_unique)
        return None
    except _Twice:
        pass
    except (ValueError, RecursionError):
        return None
    stack: list[tuple[Any, JsonPath]] = [(json.loads(data, object_pairs_hook=_marked), ())]
    while stack:  # without recursion: the JSON may be nested deeper than Python recurses
        node, path = stack.pop()
        if isinstance(node, dict) and _TWICE in node:
            return path, str(node[_TWICE])
        items = node.items() if isinstance(node, dict) else enumerate(node)
        stack += [(v, (*path, k)) for k, v in items if isinstance(v, (dict, list))]
    return None
