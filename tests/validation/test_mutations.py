"""The validator bites: for every profile (the gateway's profiles/ and the test profiles
here), mutations generated from its snapshot each give exactly the expected issue at the
expected FHIRPath expression.

For each profile a conforming sample of its type is taken from the golden outputs and the
examples; then, one mutation at a time: each required element removed
(``validation.cardinality``), each fixed or pattern value broken (``validation.fixed``),
each required binding given a code outside it (``validation.binding``), and each of the
profile's own invariants violated by the hand-written case in ``INVARIANT_CASES``
(``validation.invariant``). Only the profile layer is asked (the structural R4B check
also refuses a missing base-required element, with its own code).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.validation._check import ProfileValidator
from gateway.validation._profiles import Elem, Plans
from gateway.validation._terminology import expand

from .conftest import REPO, TEST_PROFILES, golden_bundles, needs_core

pytestmark = needs_core

Mutation = tuple[str, Callable[[dict[str, Any]], None], str, str]  # name, mutate, code, where


# Profile invariants: key → (how to violate it on a conforming sample, the location
# after the resource type). A profile invariant without a case here fails the test.
def _no_reason(resource: dict[str, Any]) -> None:
    resource.pop("reasonCode", None)
    resource.pop("note", None)


INVARIANT_CASES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "tsr-1": (_no_reason, ""),
}


def _profiles() -> list[Path]:
    found = sorted((REPO / "profiles").glob("StructureDefinition-*.json"))
    found += sorted(TEST_PROFILES.glob("StructureDefinition-*.json"))
    out = []
    for path in found:
        sd = json.loads(path.read_text(encoding="utf-8"))
        if sd.get("kind") == "resource" and "snapshot" in sd:
            out.append(path)
    return out


def _errors(plans: Plans, url: str, resource: dict[str, Any]) -> list[tuple[str, str]]:
    issues = ProfileValidator().validate(resource, str(resource["resourceType"]), url, None, None)
    return sorted((i.code, i.location or "") for i in issues if i.severity == "error")


def _sample(plans: Plans, url: str, rtype: str) -> dict[str, Any]:
    for _, bundle in golden_bundles():
        found = (
            [bundle] if rtype == "Bundle" else [e.get("resource") or {} for e in bundle["entry"]]
        )
        for resource in found:
            if resource.get("resourceType") == rtype and not _errors(plans, url, resource):
                return copy.deepcopy(resource)
    pytest.fail(f"no golden or example {rtype} conforms to {url}: nothing to mutate")


def _present(data: dict[str, Any], elem: Elem) -> tuple[str, Any] | None:
    for key, _ in elem.json_keys():
        if key in data:
            return key, data[key]
    return None


def _break(value: Any) -> Any:
    """The value with its first string changed."""
    if isinstance(value, str):
        return value + "-broken"
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, dict):
        out = dict(value)
        key = next(iter(out))
        out[key] = _break(out[key])
        return out
    if isinstance(value, list):
        return [_break(value[0]), *value[1:]]
    return value


def _mutations(plans: Plans, root: Elem, sample: dict[str, Any]) -> list[Mutation]:
    out: list[Mutation] = []
    rtype = str(sample["resourceType"])

    def visit(children: dict[str, Elem], path: list[str | int], where: str) -> None:
        node: Any = sample
        for step in path:
            node = node[step]
        for elem in children.values():
            found = _present(node, elem)
            if elem.min > 0 and found is not None:
                keys = [k for k, _ in elem.json_keys()]

                def remove(
                    r: dict[str, Any], path: list[str | int] = path, keys: list[str] = keys
                ) -> None:
                    target: Any = r
                    for step in path:
                        target = target[step]
                    for k in keys:
                        target.pop(k, None)

                out.append(
                    (f"remove {elem.id}", remove, "validation.cardinality", f"{where}.{elem.name}")
                )
            if found is None:
                continue
            key, value = found
            many = isinstance(value, list)
            first_path = [*path, key, 0] if many else [*path, key]
            first_where = f"{where}.{key}[0]" if many else f"{where}.{key}"
            expansion = expand(plans.defs, elem.binding[1]) if elem.binding else None
            if elem.fixed is not None and not elem.slices:
                # a bound code is broken into another code of its ValueSet, so that only
                # the fixed value is wrong
                others = sorted(expansion.codes - {elem.fixed[1]}) if expansion else []

                def set_to(
                    r: dict[str, Any], p: list[str | int] = first_path, others: list[str] = others
                ) -> None:
                    target: Any = r
                    for step in p[:-1]:
                        target = target[step]
                    old = target[p[-1]]
                    target[p[-1]] = others[0] if others and isinstance(old, str) else _break(old)

                out.append((f"break fixed {elem.id}", set_to, "validation.fixed", first_where))
            type_name = elem.json_keys()[0][1] if not elem.choice else ""
            if (
                elem.binding is not None
                and elem.fixed is None  # a fixed value is checked as such
                and elem.binding[0] == "required"
                and type_name in ("code", "Coding", "CodeableConcept")
                and expansion is not None
            ):
                where_code = first_where + (".coding[0]" if type_name == "CodeableConcept" else "")

                def off(
                    r: dict[str, Any], p: list[str | int] = first_path, t: str = type_name
                ) -> None:
                    target: Any = r
                    for step in p[:-1]:
                        target = target[step]
                    if t == "code":
                        target[p[-1]] = "zz-not-in-the-valueset"
                    elif t == "Coding":
                        target[p[-1]] = {**target[p[-1]], "code": "zz-not-in-the-valueset"}
                    else:
                        coding = target[p[-1]].get("coding") or [{}]
                        target[p[-1]] = {
                            **target[p[-1]],
                            "coding": [{**coding[0], "code": "zz-not-in-the-valueset"}],
                        }

                out.append((f"code outside {elem.id}", off, "validation.binding", where_code))
            if elem.children and isinstance(value if not many else value[0], dict):
                visit(elem.children, first_path, first_where)

    visit(root.children or {}, [], rtype)
    return out


def _keys(sd: dict[str, Any]) -> list[str]:
    return [str(c["key"]) for e in sd["snapshot"]["element"] for c in e.get("constraint") or []]


def _own_invariants(plans: Plans, sd: dict[str, Any]) -> list[str]:
    """The profile's constraints that its base definition does not have."""
    base = plans.defs.structure(str(sd["type"]))
    inherited = set(_keys(base)) if base else set()
    return sorted(set(_keys(sd)) - inherited)


@pytest.mark.parametrize("path", _profiles(), ids=lambda p: p.stem)
def test_every_mutation_gives_its_issue(path: Path, test_plans: Plans) -> None:
    sd = json.loads(path.read_text(encoding="utf-8"))
    url, rtype = str(sd["url"]), str(sd["type"])
    root = test_plans.plan(url)
    assert root is not None
    sample = _sample(test_plans, url, rtype)
    cases: list[Mutation] = _mutations(test_plans, root, sample)
    for key in _own_invariants(test_plans, sd):
        assert key in INVARIANT_CASES, f"{url}: add a violating case for invariant {key}"
        mutate, tail = INVARIANT_CASES[key]
        cases.append((f"violate {key}", mutate, "validation.invariant", rtype + tail))
    kinds = {code for _, _, code, _ in cases}
    assert "validation.cardinality" in kinds, f"{url}: no required element present in the sample"
    failures = []
    for name, mutate, code, where in cases:
        mutant = copy.deepcopy(sample)
        mutate(mutant)
        got = _errors(test_plans, url, mutant)
        if got != [(code, where)]:
            failures.append(f"{name}: expected [{code} at {where}], got {got}")
    assert not failures, "\n".join(failures)


def test_the_test_profile_covers_each_kind(test_plans: Plans) -> None:
    """The generated mutations of the test profile include every kind of check."""
    url = "https://fhir-gateway.example.org/test/StructureDefinition/test-servicerequest"
    root = test_plans.plan(url)
    assert root is not None
    sample = _sample(test_plans, url, "ServiceRequest")
    names = {name for name, *_ in _mutations(test_plans, root, sample)}
    assert {
        "remove ServiceRequest.identifier",
        "remove ServiceRequest.authoredOn",
        "break fixed ServiceRequest.intent",
        "code outside ServiceRequest.priority",
        "code outside ServiceRequest.status",
    } <= names
