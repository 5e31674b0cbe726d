"""The validator's fast path (known skeletons run their value program; slice walks, frozen
subtrees and invariants served from their memos) gives the verdict of its full path (a
new validator with every memo empty), issue for issue: on every golden and produced
Bundle, on each of their resources, and on every mutation the mutation test makes, each
also with its identifiers' values changed as a new record's are (what the memos must
see through, and nothing more)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.validation import TRANSACTION_PROFILE, Validator, _invariants
from gateway.validation import _profiles as profile_walk
from gateway.validation._profiles import Plans

from .conftest import golden_bundles, needs_core
from .test_mutations import INVARIANT_CASES, _mutations, _own_invariants, _profiles, _sample

pytestmark = needs_core

Verdict = list[tuple[str, str, str | None, str]]


def _verdict(issues: list[Any]) -> Verdict:
    return sorted((i.code, i.severity, i.location, i.message) for i in issues)


def _forget() -> None:
    """Empty the module-level memos: what a validator sees next, it walks in full."""
    profile_walk._FROZEN_OK.clear()
    profile_walk._SLICE_OK.clear()
    profile_walk._STRING_OK.clear()
    _invariants._MEMO.clear()


def _renumbered(node: Any, k: int) -> Any:
    """A copy with every identifier's value changed, as a new record's would be."""
    if isinstance(node, list):
        return [_renumbered(v, k) for v in node]
    if not isinstance(node, dict):
        return node
    out = {key: _renumbered(v, k) for key, v in node.items()}
    for ident in out.get("identifier") or [] if isinstance(out.get("identifier"), list) else []:
        if isinstance(ident, dict) and isinstance(ident.get("value"), str):
            ident["value"] += f"-{k}"
    return out


Case = tuple[str, dict[str, Any], str | None]  # name, resource or Bundle, profile


def _slice_item_cases(name: str, resource: dict[str, Any]) -> Iterator[Case]:
    """A sliced identifier (placer, filler, accession) changed inside, where the slice's
    own walk looks: a valid and an invalid Identifier.use (a required binding), and a new
    value (where it does not look)."""
    identifiers = resource.get("identifier")
    if not isinstance(identifiers, list):
        return
    for n, ident in enumerate(identifiers):
        if not isinstance(ident, dict) or "type" not in ident:
            continue
        for change in ({"use": "official"}, {"use": "zz-not-a-use"}, {"value": "X-1"}):
            changed = copy.deepcopy(resource)
            changed["identifier"][n] = {**ident, **change}
            yield f"{name} identifier[{n}] {change}", changed, None


def _resource_cases(plans: Plans, produced: list[tuple[str, dict[str, Any]]]) -> Iterator[Case]:
    for path in _profiles():
        sd = json.loads(Path(path).read_text(encoding="utf-8"))
        url, rtype = str(sd["url"]), str(sd["type"])
        root = plans.plan(url)
        assert root is not None
        sample = _sample(plans, url, rtype, produced)
        mutations: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
            (name, mutate) for name, mutate, _ in _mutations(plans, root, sample)
        ]
        mutations += [
            (f"violate {key}", INVARIANT_CASES[key][0]) for key in _own_invariants(plans, sd)
        ]
        yield f"{sd['id']} sample", sample, url
        for name, mutate in mutations:
            mutant = copy.deepcopy(sample)
            mutate(mutant)
            yield f"{sd['id']}: {name}", mutant, url
            yield f"{sd['id']}: {name}, renumbered", _renumbered(mutant, 7), url


def _check(validator: Validator, case: Case) -> Verdict:
    _, data, profile = case
    if data.get("resourceType") == "Bundle" and profile is None:
        return _verdict(validator.check_bundle(copy.deepcopy(data), True, TRANSACTION_PROFILE))
    return _verdict(
        validator.validate_resource(copy.deepcopy(data), profile=profile, all_issues=True)
    )


def test_fast_path_agrees_with_the_full_path(
    test_plans: Plans, produced_bundles: list[tuple[str, dict[str, Any]]]
) -> None:
    bundles = [*golden_bundles(), *produced_bundles]
    cases: list[Case] = []
    for name, bundle in bundles:
        cases.append((name, bundle, None))
        cases.append((f"{name}, renumbered", _renumbered(bundle, 3), None))
        for n, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource")
            if isinstance(resource, dict):
                cases.append((f"{name} entry {n}", resource, None))
                cases += _slice_item_cases(f"{name} entry {n}", resource)
    cases += list(_resource_cases(test_plans, produced_bundles))
    # full path: each case alone, every memo empty
    full = []
    for case in cases:
        _forget()
        full.append(_check(Validator(), case))
    # fast path: one validator that has seen every Bundle, so that each case meets known
    # skeletons and memos filled by its neighbours; each case twice (then by its own)
    _forget()
    warm = Validator()
    for _, bundle in bundles:
        _check(warm, (_, bundle, None))
    differ = []
    for case, expected in zip(cases, full, strict=True):
        for attempt in (1, 2):
            got = _check(warm, case)
            if got != expected:
                differ.append(f"{case[0]} (pass {attempt}): full {expected}, fast {got}")
    assert not differ, "\n".join(differ[:10])
    assert any(v for v in full), "some case must fail, or the comparison proves little"


@pytest.mark.parametrize("memo", ["slice"])
def test_the_slice_memo_is_used(memo: str) -> None:
    """The comparison above runs the memo it is about (a renumbered order's identifiers
    are served from it)."""
    _forget()
    warm = Validator()
    name, bundle = next(
        (n, b)
        for n, b in golden_bundles()
        if any(
            (e.get("resource") or {}).get("resourceType") == "ServiceRequest"
            and any("type" in i for i in e["resource"].get("identifier", []))
            for e in b.get("entry", [])
        )
    )
    assert warm.check_bundle(copy.deepcopy(bundle), True, TRANSACTION_PROFILE) == [], name
    assert profile_walk._SLICE_OK
