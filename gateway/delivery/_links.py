"""Links between records at the partner (issue #13, item 4).

An order, its DICOM study and its report are three conversions; the study's ``basedOn``
and the report's ``basedOn`` / ``imagingStudy`` are *logical* references (``type`` and
``identifier``, docs/partners.md), which a partner accepts whatever it holds but cannot
follow. The outbox keeps what each row **provides** (the identifiers of its orders,
studies and reports) and **needs** (its logical references to such a resource that the
row itself does not carry). A row waits until every record it needs was delivered to
the same partner, then goes with each logical reference made conditional
(``ServiceRequest?identifier=system|value``): the partner resolves it to its own
resource, so the records are linked there. After ``delivery_reference_wait`` it goes
with the logical reference only, and its event says so.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["LINKED_TYPES", "Link", "link_ref", "links_of", "resolve_links"]

# Resources one conversion makes and another refers to by identifier.
LINKED_TYPES = frozenset({"ServiceRequest", "ImagingStudy", "DiagnosticReport"})

Link = tuple[str, str, str]  # (resource type, identifier system, value)


def link_ref(link: Link) -> str:
    """The stored key of a link: no identifier value in the clear."""
    return hashlib.sha256("|".join(link).encode("utf-8", "surrogatepass")).hexdigest()


def links_of(bundle: Mapping[str, Any]) -> tuple[set[Link], set[Link]]:
    """(provides, needs) of a Bundle: every identifier of its linked resources, and
    every logical reference to a linked resource it does not provide itself."""
    provides: set[Link] = set()
    needs: set[Link] = set()
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            continue
        if resource.get("resourceType") in LINKED_TYPES:
            for ident in resource.get("identifier") or []:
                if ident.get("system") and ident.get("value"):
                    provides.add(
                        (str(resource["resourceType"]), str(ident["system"]), str(ident["value"]))
                    )
        _logical(resource, needs, top=True)
    return provides, needs - provides


def _logical(node: Any, out: set[Link], top: bool = False) -> None:
    if isinstance(node, Mapping):
        ident = node.get("identifier")
        if (
            not top
            and isinstance(node.get("type"), str)
            and node["type"] in LINKED_TYPES
            and isinstance(ident, Mapping)
            and ident.get("system")
            and ident.get("value")
            and not node.get("reference")
        ):
            out.add((str(node["type"]), str(ident["system"]), str(ident["value"])))
        for value in node.values():
            if isinstance(value, (Mapping, list)):
                _logical(value, out)
    elif isinstance(node, list):
        for value in node:
            _logical(value, out)


def resolve_links(parts: list[dict[str, Any]], delivered: Iterable[Link]) -> list[dict[str, Any]]:
    """``parts`` with each logical reference to a ``delivered`` link given the
    conditional reference that finds it at the partner (copies; the rest shared)."""
    found = set(delivered)
    return [_resolve(part, found) for part in parts] if found else parts


def _resolve(node: Any, found: set[Link]) -> Any:
    if isinstance(node, dict):
        changed = {k: _resolve(v, found) for k, v in node.items() if isinstance(v, (dict, list))}
        ident = node.get("identifier")
        if isinstance(ident, dict) and not node.get("reference"):
            link = (str(node.get("type")), str(ident.get("system")), str(ident.get("value")))
            if link in found:
                changed["reference"] = f"{link[0]}?identifier={link[1]}|{link[2]}"
        if not changed or all(changed[k] is node.get(k) for k in changed):
            return node
        return {**node, **changed}
    if isinstance(node, list):
        items = [_resolve(v, found) for v in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    return node
