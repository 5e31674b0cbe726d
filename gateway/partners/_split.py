"""Fitting a transaction Bundle to what a partner accepts.

A partner says the most entries it takes in one request (``max_entries``, 0 = no
limit: Medplum refuses a transaction of more than 8 entries when one is conditional)
and how to write (``transaction`` or ``batch``). :func:`split_bundle` turns one Bundle
the gateway made into the ordered list of requests that apply all of it at that
partner; the delivery stage (the outbox) sends them in that order, each only after the
one before succeeded. The design and its trade-offs are in docs/partners.md.

A part never refers to a ``urn:uuid`` of another part (a server resolves those only
within one request): such a reference becomes the conditional reference of its target
(``Practitioner?identifier=system|value``, the query of the target's own entry), which
the partner resolves to the resource an earlier part already wrote.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..validation import reference_values

__all__ = ["WRITE_KINDS", "split_bundle"]

WRITE_KINDS = ("transaction", "batch")


def split_bundle(
    bundle: dict[str, Any], max_entries: int = 0, write: str = "transaction"
) -> list[dict[str, Any]]:
    """The requests that apply ``bundle`` (a transaction) at a partner, in order.

    ``transaction``: the Bundle itself when it fits ``max_entries`` (0 = no limit), else
    transactions of at most ``max_entries`` entries, each holding what the later ones
    refer to (reference data before the content that points at it). ``batch``: batches
    by dependency level (an entry comes after every entry it refers to; within one
    batch entries are independent, as a batch requires), each of at most
    ``max_entries``. Entries keep their order within a part; the same Bundle always
    gives the same parts."""
    if write not in WRITE_KINDS:
        raise ConfigError("partners", f"write: expected one of {', '.join(WRITE_KINDS)}")
    entries: list[dict[str, Any]] = list(bundle.get("entry") or [])
    if write == "transaction" and (not max_entries or len(entries) <= max_entries):
        return [bundle]
    deps = _dependencies(entries)
    levels = _levels(deps)
    if write == "batch":
        parts = _batches(levels, max_entries)
    else:
        parts = _transactions(levels, deps, max_entries)
    where = {n: p for p, part in enumerate(parts) for n in part}
    return [_part(bundle, entries, part, p, where, write) for p, part in enumerate(parts)]


def _dependencies(entries: list[dict[str, Any]]) -> list[set[int]]:
    """For each entry, the other entries of the Bundle its resource refers to."""
    by_url = {e.get("fullUrl"): n for n, e in enumerate(entries) if e.get("fullUrl")}
    out: list[set[int]] = []
    for n, entry in enumerate(entries):
        found: list[str] = []
        reference_values(entry.get("resource"), found)
        out.append({by_url[r] for r in found if r in by_url and by_url[r] != n})
    return out


def _levels(deps: list[set[int]]) -> list[int]:
    """Each entry's depth: 0 when it refers to no other entry, else one more than the
    deepest entry it refers to. A reference cycle cannot be split."""
    level: list[int | None] = [None] * len(deps)
    for start in range(len(deps)):
        stack, visiting = [start], {start}
        while stack:
            n = stack[-1]
            pending = [d for d in sorted(deps[n]) if level[d] is None]
            cycle = [d for d in pending if d in visiting]
            if cycle:
                raise ConfigError(
                    "partner-limit",
                    f"Bundle.entry[{n}] and Bundle.entry[{cycle[0]}] refer to each other: "
                    "the Bundle cannot be split into separate requests",
                )
            if pending:
                stack.append(pending[0])
                visiting.add(pending[0])
                continue
            level[n] = 1 + max((level[d] or 0 for d in deps[n]), default=-1)
            stack.pop()
            visiting.discard(n)
    return [lv or 0 for lv in level]


def _batches(levels: list[int], max_entries: int) -> list[list[int]]:
    parts: list[list[int]] = []
    for depth in sorted(set(levels)):
        same = [n for n, lv in enumerate(levels) if lv == depth]
        size = max_entries or len(same)
        parts += [same[i : i + size] for i in range(0, len(same), size)]
    return parts


def _transactions(levels: list[int], deps: list[set[int]], max_entries: int) -> list[list[int]]:
    """Fill parts in dependency order (deepest level last, Bundle order within a level),
    so everything an entry refers to is in its part or an earlier one."""
    order = sorted(range(len(levels)), key=lambda n: (levels[n], n))
    parts = [order[i : i + max_entries] for i in range(0, len(order), max_entries)]
    return [sorted(part) for part in parts]


def _part(
    bundle: dict[str, Any],
    entries: list[dict[str, Any]],
    part: list[int],
    index: int,
    where: dict[int, int],
    write: str,
) -> dict[str, Any]:
    # References to entries of other parts become conditional references to what an
    # earlier part wrote (a batch's entries never refer to each other: same level).
    outside = {
        str(e["fullUrl"]): _conditional(e, n)
        for n, e in enumerate(entries)
        if e.get("fullUrl") and where[n] != index
    }
    out = {k: v for k, v in bundle.items() if k != "entry"}
    out["type"] = write
    out["entry"] = [
        {**entries[n], "resource": _rewrite(entries[n].get("resource"), outside)} for n in part
    ]
    return out


def _conditional(entry: dict[str, Any], n: int) -> str:
    """The conditional reference that finds ``entry``'s resource at the partner."""
    request = entry.get("request") or {}
    url = str(request.get("url") or "")
    if request.get("ifNoneExist"):
        return f"{url}?{request['ifNoneExist']}"
    if "?" in url or (request.get("method") == "PUT" and "/" in url):
        return url  # a conditional update's own query, or the Type/id an update writes
    raise ConfigError(
        "partner-limit",
        f"Bundle.entry[{n}] is referred to from another part but its request has no "
        "condition to find it by (ifNoneExist or a conditional update)",
    )


def _rewrite(node: Any, outside: dict[str, str]) -> Any:
    """A copy of ``node`` with references to ``outside`` replaced; values without one
    are shared, not copied (they may be frozen: gateway/shared.py)."""
    if isinstance(node, dict):
        ref = node.get("reference")
        changed = {k: _rewrite(v, outside) for k, v in node.items() if isinstance(v, (dict, list))}
        if isinstance(ref, str) and ref in outside:
            changed["reference"] = outside[ref]
        if not changed or all(changed[k] is node[k] for k in changed):
            return node
        return {**node, **changed}
    if isinstance(node, list):
        items = [_rewrite(v, outside) for v in node]
        return node if all(a is b for a, b in zip(items, node, strict=True)) else items
    return node
