"""The invariants the validator runs in Python (``_invariants.NATIVE``) say what
fhirpathpy says of the same expression, on every output Bundle and its requests, and on
the edge cases FHIRPath's empty makes (missing fullUrl, request, method, value)."""

from __future__ import annotations

import copy
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from gateway.validation._invariants import NATIVE
from tests import outputs

BUNDLE_EXPRESSIONS = [e for e in NATIVE if e.startswith("entry.")]
REQUEST_EXPRESSIONS = [e for e in NATIVE if e.startswith("identifier.")]


def _bundles() -> list[dict[str, Any]]:
    found = []
    for path in sorted(outputs.GOLDEN.glob("**/*.expected.json")):
        found += [b for _, b in outputs.bundles(path, path.name)]
    for path in sorted(outputs.EXAMPLES.glob("*/bundles/*.json")):
        found += [b for _, b in outputs.bundles(path, path.name)]
    return found


def _bundle_cases() -> list[dict[str, Any]]:
    cases = _bundles()
    base = cases[0]
    edits = [
        lambda e: e.pop("fullUrl"),
        lambda e: e.__setitem__("fullUrl", "http://x.example/Patient/1"),
        lambda e: e.pop("request"),
        lambda e: e["request"].pop("method"),
        lambda e: e["request"].pop("ifNoneExist", None),
        lambda e: e["request"].update(method="PUT", url="Patient/1"),
        lambda e: e["request"].update(method="PUT", url="Patient?identifier=a|b"),
        lambda e: e["request"].update(method="DELETE"),
        lambda e: e.__setitem__("resource", {"resourceType": "Provenance"}),
        lambda e: e.pop("resource"),
    ]
    for edit in edits:
        for n in (0, -1):
            changed = copy.deepcopy(base)
            edit(changed["entry"][n])
            cases.append(changed)
    cases.append({"resourceType": "Bundle", "type": "transaction"})  # no entries
    return cases


def _request_cases() -> list[dict[str, Any]]:
    found = [
        e["resource"]
        for b in _bundles()
        for e in b["entry"]
        if e["resource"]["resourceType"] == "ServiceRequest"
    ]
    extra: list[list[dict[str, Any]]] = [
        [],
        [{"system": "urn:dicom:uid"}],
        [{"system": "urn:dicom:uid", "value": "1.2.3"}],
        [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}, {"value": "x"}],
        [{"system": "https://a.example/sid/referral"}],
        [{"system": "https://a.example/sid/referral", "value": "R1"}],
        [{"system": "https://a.example/sid/referrals", "value": "R1"}],
        [{"value": "R1"}],
    ]
    found += [{"resourceType": "ServiceRequest", "identifier": ids} for ids in extra]
    return found


def _fhirpath(expression: str, node: dict[str, Any]) -> bool:
    return bool(fhirpathpy.evaluate(node, expression, {}, models["r4"]) == [True])


@pytest.mark.parametrize("expression", BUNDLE_EXPRESSIONS)
def test_bundle_invariants_agree_with_fhirpathpy(expression: str) -> None:
    cases = _bundle_cases()
    verdicts = [(_fhirpath(expression, c), NATIVE[expression](c)) for c in cases]
    assert [n for n, (a, b) in enumerate(verdicts) if a != b] == []
    assert {a for a, _ in verdicts} == {True, False}  # the cases do tell them apart


@pytest.mark.parametrize("expression", REQUEST_EXPRESSIONS)
def test_request_invariants_agree_with_fhirpathpy(expression: str) -> None:
    cases = _request_cases()
    verdicts = [(_fhirpath(expression, c), NATIVE[expression](c)) for c in cases]
    assert [n for n, (a, b) in enumerate(verdicts) if a != b] == []
    assert {a for a, _ in verdicts} == {True, False}
