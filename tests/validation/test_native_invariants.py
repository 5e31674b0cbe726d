"""The invariants the validator runs in Python (``_invariants.NATIVE``) say what
fhirpathpy says of the same expression, on every output Bundle and its requests, and on
the edge cases FHIRPath's empty makes (missing fullUrl, request, method, value)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.models import models

from gateway.validation._invariants import NATIVE
from tests import outputs

BUNDLE_EXPRESSIONS = [e for e in NATIVE if e.startswith("entry.")]
REQUEST_EXPRESSIONS = [e for e in NATIVE if e.startswith("identifier.")]
# The others, by the node they run on (Bundle.entry, Condition, DiagnosticReport).
ENTRY_EXPRESSIONS = [e for e in NATIVE if e.startswith("fullUrl.")]
CONDITION_EXPRESSIONS = [e for e in NATIVE if e.startswith("verificationStatus.")]
REPORT_EXPRESSIONS = [e for e in NATIVE if e.startswith(("language.", "imagingStudy."))]
ORGANIZATION_EXPRESSIONS = [e for e in NATIVE if e.startswith("(identifier.")]


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
        [{"type": {"coding": [{"system": _V2, "code": "PLAC"}]}}],
        [{"type": {"coding": [{"system": _V2, "code": "FILL"}]}, "value": "F1"}],
        [{"type": {"coding": [{"system": _V2, "code": "ACSN"}, {"code": "x"}]}}],
        [{"type": {"coding": [{"system": _V2, "code": "MR"}]}, "value": "M1"}],
        [{"type": {"coding": [{"code": "PLAC"}]}}, {"type": {"text": "PLAC"}}],
        [{"type": {"coding": [{"system": _V2 + "x", "code": "PLAC"}]}}],
    ]
    found += [{"resourceType": "ServiceRequest", "identifier": ids} for ids in extra]
    return found


_V2 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _resources(kind: str) -> list[dict[str, Any]]:
    return [
        e["resource"]
        for b in _bundles()
        for e in b["entry"]
        if e["resource"]["resourceType"] == kind
    ]


def _entry_cases() -> list[dict[str, Any]]:
    found = [e for b in _bundles() for e in b["entry"]]
    extra: list[dict[str, Any]] = [
        {},
        {"fullUrl": "http://x.example/Patient/1/_history/2"},
        {"fullUrl": "http://x.example/Patient/1"},
        {"fullUrl": "urn:uuid:0d3a1f4e-0000-5000-8000-000000000000"},
    ]
    return found + extra


def _condition_cases() -> list[dict[str, Any]]:
    found = _resources("Condition")
    vs = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
    clinical = {"coding": [{"system": "x", "code": "active"}]}
    refuted = {"coding": [{"system": vs, "code": "entered-in-error"}]}
    extra: list[dict[str, Any]] = [
        {},
        {"clinicalStatus": clinical},
        {"verificationStatus": refuted},
        {"verificationStatus": refuted, "clinicalStatus": clinical},
        {
            "verificationStatus": {"coding": [{"system": vs, "code": "confirmed"}]},
            "clinicalStatus": clinical,
        },
        {
            "verificationStatus": {"coding": [{"code": "entered-in-error"}]},
            "clinicalStatus": clinical,
        },
        {
            "verificationStatus": {"coding": [{"system": vs, "code": "x"}, refuted["coding"][0]]},
            "clinicalStatus": clinical,
        },
    ]
    return found + [{"resourceType": "Condition", **c} for c in extra]


def _organization_cases() -> list[dict[str, Any]]:
    found = _resources("Organization")
    extension = {"extension": [{"url": "http://x.example/e", "valueString": "x"}]}
    extra: list[dict[str, Any]] = [
        {},
        {"name": "x"},
        {"name": ""},
        {"name": None},
        {"name": ["a", "b"]},
        {"_name": extension},
        {"_name": None},
        {"name": None, "_name": extension},
        {"identifier": []},
        {"identifier": [{}]},
        {"identifier": [None]},
        {"identifier": {"value": "1"}},
        {"identifier": [{"value": "1"}], "name": "x"},
        {"alias": ["x"]},
    ]
    return found + [{"resourceType": "Organization", **c} for c in extra]


def _report_cases() -> list[dict[str, Any]]:
    found = _resources("DiagnosticReport")
    study = {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": "urn:oid:1.2"},
    }
    extra: list[dict[str, Any]] = [
        {},
        {"language": "en"},
        {"language": "zh-Hant-HK"},
        {"language": "zh-Hant"},
        {"language": "fr"},
        {"imagingStudy": [study]},
        {"imagingStudy": [study, {"identifier": {"system": "urn:other", "value": "1"}}]},
        {"imagingStudy": [{"identifier": {"value": "1"}}]},
        {"imagingStudy": [{"reference": "urn:uuid:1"}]},
    ]
    return found + [{"resourceType": "DiagnosticReport", **c} for c in extra]


def _fhirpath(expression: str, node: dict[str, Any]) -> bool:
    # the validator's reading of a result (Invariant.holds): true, or empty (nothing to test)
    return fhirpathpy.evaluate(node, expression, {}, models["r4"]) in ([True], [])


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


@pytest.mark.parametrize(
    ("expression", "cases"),
    [(e, _entry_cases) for e in ENTRY_EXPRESSIONS]
    + [(e, _condition_cases) for e in CONDITION_EXPRESSIONS]
    + [(e, _report_cases) for e in REPORT_EXPRESSIONS]
    + [(e, _organization_cases) for e in ORGANIZATION_EXPRESSIONS],
)
def test_resource_invariants_agree_with_fhirpathpy(
    expression: str, cases: Callable[[], list[dict[str, Any]]]
) -> None:
    found = cases()
    verdicts = [(_fhirpath(expression, c), NATIVE[expression](c)) for c in found]
    assert [n for n, (a, b) in enumerate(verdicts) if a != b] == []
    assert {a for a, _ in verdicts} == {True, False}


def test_every_native_invariant_is_tested() -> None:
    tested = (
        BUNDLE_EXPRESSIONS
        + REQUEST_EXPRESSIONS
        + ENTRY_EXPRESSIONS
        + CONDITION_EXPRESSIONS
        + REPORT_EXPRESSIONS
        + ORGANIZATION_EXPRESSIONS
    )
    assert sorted(tested) == sorted(NATIVE)


# -- guards on choice elements --------------------------------------------------------
# con-4 (Condition): abatement.empty() or clinicalStatus is inactive/resolved/remission.
# FHIRPath's ``abatement`` is the JSON's abatementDateTime, abatementAge...: the guard
# that skips fhirpathpy when abatement is absent must see every form of it.
_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
_ABATEMENTS = {
    "abatementDateTime": "2024-03-01",
    "abatementAge": {"value": 3, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
    "abatementPeriod": {"start": "2024-01-01", "end": "2024-03-01"},
    "abatementRange": {"low": {"value": 1}, "high": {"value": 2}},
    "abatementString": "据患者所述已缓解",
}


def _condition(status: str, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": _CLINICAL, "code": status}]},
        "subject": {"reference": "Patient/1"},
        **more,
    }


@pytest.mark.parametrize("mode", ["reference", "incremental", "construct"])
@pytest.mark.parametrize("key", sorted(_ABATEMENTS))
def test_con4_sees_every_abatement_choice(key: str, mode: str) -> None:
    from gateway.validation import Validator

    validator = Validator(mode)
    abated = _condition("active", **{key: _ABATEMENTS[key]})
    issues = validator.validate_resource(abated)
    assert [(i.code, i.message.split(":")[0], i.location) for i in issues] == [
        ("validation.invariant", "constraint con-4 not met", "Condition")
    ]
    assert validator.validate_resource(_condition("resolved", **{key: _ABATEMENTS[key]})) == []
    assert validator.validate_resource(_condition("active")) == []


# -- guards that settle an invariant by which elements exist ----------------------------
# An or-operand ``X.empty()`` or ``X.where(...).empty()`` holds when X is absent
# (_invariants._absence, _filtered): on a node where the guard holds, so must fhirpathpy.
_OBS7 = (
    "value.empty() or component.code.where(coding.intersect(%resource.code.coding)"
    ".exists()).empty()"
)
_CODE = {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}
_OTHER = {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}
_GUARD_CASES: list[tuple[str, str, dict[str, Any], bool, bool]] = [
    # (expression, the node's type, the node, whether the guard holds, fhirpathpy's verdict)
    (_OBS7, "Observation", {"code": _CODE, "valueString": "x"}, True, True),
    (_OBS7, "Observation", {"code": _CODE, "component": [{"code": _CODE}]}, True, True),
    (_OBS7, "Observation", {"code": _CODE, "valueString": "x", "component": [{}]}, True, True),
    (
        _OBS7,
        "Observation",
        {"code": _CODE, "valueString": "x", "component": [{"code": _CODE}]},
        False,
        False,
    ),
    (
        _OBS7,
        "Observation",
        {"code": _CODE, "valueString": "x", "component": [{"code": _OTHER}]},
        False,
        True,
    ),
    (
        _OBS7,
        "Observation",
        {"code": _CODE, "_valueString": {"id": "v"}, "component": [{"code": _CODE}]},
        False,
        False,
    ),
    # a primitive given by its extensions alone exists to FHIRPath
    (
        "status.empty() or status.extension.where(url = 'x').exists()",
        "Observation",
        {"_status": {"extension": [{"url": "y", "valueString": "z"}]}},
        False,
        False,
    ),
    ("status.empty() or status.extension.where(url = 'x').exists()", "Observation", {}, True, True),
]


@pytest.mark.parametrize(("expression", "type_name", "node", "guarded", "verdict"), _GUARD_CASES)
def test_a_guard_holds_only_where_fhirpathpy_does(
    expression: str, type_name: str, node: dict[str, Any], guarded: bool, verdict: bool
) -> None:
    from gateway.validation._invariants import Invariant, compile_invariant

    inv = compile_invariant({"key": "t", "expression": expression}, type_name)
    assert isinstance(inv, Invariant) and inv.guard is not None and inv.absence is not None
    resource = {"resourceType": type_name, **node}
    assert (inv.guard(resource), inv.absence(resource)) == (guarded, guarded)
    found = fhirpathpy.evaluate(resource, expression, {"resource": resource}, models["r4"])
    assert (found in ([True], [])) == verdict
