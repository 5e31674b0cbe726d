"""The goldens tell one story: every order a golden report or study refers to (a logical
reference, docs/partners.md) is made by another golden, so the partner test applies
Bundles whose links all land."""

from __future__ import annotations

from typing import Any

import orjson

from tests.golden.regenerate import GOLDEN

Key = tuple[str, str, str]


def _bundles() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(GOLDEN.glob("**/*.expected.json")):
        data = orjson.loads(path.read_bytes())
        out += [b for b in (data if isinstance(data, list) else [data]) if "entry" in b]
    return out


def _logical(node: Any, out: list[Key]) -> None:
    if isinstance(node, dict):
        ident = node.get("identifier")
        if "type" in node and "reference" not in node and isinstance(ident, dict):
            out.append((node["type"], ident.get("system", ""), ident.get("value", "")))
        for value in node.values():
            _logical(value, out)
    elif isinstance(node, list):
        for value in node:
            _logical(value, out)


def test_every_order_a_golden_refers_to_is_made_by_a_golden() -> None:
    made: set[Key] = set()
    wanted: list[Key] = []
    for bundle in _bundles():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            for ident in resource.get("identifier") or []:
                made.add((resource["resourceType"], ident.get("system", ""), ident["value"]))
            _logical(resource, wanted)
    orders = [w for w in wanted if w[0] == "ServiceRequest"]
    assert len(orders) > 5
    assert [w for w in orders if w not in made] == []
