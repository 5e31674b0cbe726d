"""The profile validator on real data: no false alarms on the official R4 examples and the
golden Bundles; each kind of check at its FHIRPath location; the per-skeleton cache
gives the same verdict as a fresh walk."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.validation import Validator, validate_resource
from gateway.validation._invariants import compile_invariant, skipped
from gateway.validation._profiles import Plans

from .conftest import REPO, golden_bundles, needs_core

pytestmark = needs_core

EXAMPLES = REPO.parent / "shared" / "corpus" / "fhir-examples"
_TYPES = ("ServiceRequest", "ImagingStudy", "DiagnosticReport", "Patient", "Bundle")
TEST_SR = "https://fhir-gateway.example.org/test/StructureDefinition/test-servicerequest"
REFERRAL = "https://fhir-gateway.example.org/StructureDefinition/referral-servicerequest"


def _examples() -> list[Path]:
    return sorted(p for t in _TYPES for p in EXAMPLES.glob(f"{t}-*.json"))


def _errors(issues: list[Any]) -> list[tuple[str, str | None, str]]:
    return [(i.code, i.location, i.message) for i in issues if i.severity == "error"]


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} absent (../shared/corpus)")
def test_official_examples_give_no_error() -> None:
    """The official R4 examples of the five types are valid: no false alarm."""
    checked: dict[str, int] = {}
    failures = []
    for path in _examples():
        resource = json.loads(path.read_text(encoding="utf-8"))
        issues = Validator().validate_resource(resource, all_issues=True)
        if bad := _errors(issues):
            failures.append(f"{path.name}: {bad[:3]}")
        inside = [e.get("resource") or {} for e in resource.get("entry", [])]
        for item in [resource, *inside]:
            checked[item.get("resourceType")] = checked.get(item.get("resourceType"), 0) + 1
    assert not failures, "\n".join(failures)
    # the corpus has no Patient-*.json: its Patients are the Bundle examples' entries
    missing = [t for t in _TYPES if t not in checked]
    assert not missing, f"no official example of {missing} in {EXAMPLES}"


def test_golden_bundles_give_no_error() -> None:
    bundles = golden_bundles()
    assert len(bundles) > 20
    validator = Validator()
    for name, bundle in bundles:
        assert validator.check_bundle(bundle) == [], name
        assert validator.check_bundle(copy.deepcopy(bundle)) == [], f"{name} (cached skeletons)"


def _bundle() -> dict[str, Any]:
    _, bundle = next(
        (n, b)
        for n, b in golden_bundles()
        if any(e["resource"]["resourceType"] == "ServiceRequest" for e in b["entry"])
        and any(e["resource"]["resourceType"] == "Practitioner" for e in b["entry"])
    )
    return copy.deepcopy(bundle)


def _entry(bundle: dict[str, Any], rtype: str) -> tuple[int, dict[str, Any]]:
    return next(
        (n, e["resource"])
        for n, e in enumerate(bundle["entry"])
        if e["resource"]["resourceType"] == rtype
    )


def test_extension_without_value_breaks_ext1_at_its_path() -> None:
    """The partner server's finding: an extension with no value on a name (ext-1)."""
    for validator in (Validator(), Validator()):
        bundle = _bundle()
        assert validator.check_bundle(copy.deepcopy(bundle)) == []  # the skeleton is known
        n, practitioner = _entry(bundle, "Practitioner")
        practitioner["name"][0]["extension"] = [
            {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"}
        ]
        issues = validator.check_bundle(bundle)
        assert [(i.code, i.location) for i in issues] == [
            ("validation.invariant", f"Bundle.entry[{n}].resource.name[0].extension[0]")
        ]
        assert "ext-1" in issues[0].message


def test_reference_to_the_wrong_type() -> None:
    """Target types are the named profile's (a referral's requester is a PractitionerRole
    or an Organization), else base R4's (a Patient may request and perform)."""
    bundle = _bundle()
    n, request = _entry(bundle, "ServiceRequest")
    assert request["meta"]["profile"] == [REFERRAL]
    patient_url = request["subject"]["reference"]
    request["requester"] = {"reference": patient_url}
    assert [(i.code, i.location) for i in Validator().check_bundle(copy.deepcopy(bundle))] == [
        ("validation.reference-type", f"Bundle.entry[{n}].resource.requester.reference")
    ]
    del request["meta"]  # plain R4: another institution's referral
    assert Validator().check_bundle(copy.deepcopy(bundle)) == []
    request["performer"] = [{"reference": patient_url}, *request.get("performer", [])]
    doctor = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Practitioner"
    )
    request["subject"] = {"reference": doctor, "type": "Practitioner"}
    issues = Validator().check_bundle(bundle)
    assert sorted((i.code, i.location) for i in issues) == [
        ("validation.reference-type", f"Bundle.entry[{n}].resource.subject.reference"),
        ("validation.reference-type", f"Bundle.entry[{n}].resource.subject.type"),
    ]  # a Patient may perform (base R4), so performer[0] is no error


def test_an_upper_case_scheme_is_an_absolute_reference() -> None:
    """RFC 3986 §3.1: a scheme is case-insensitive, so ``HTTPS://host/fhir/Patient/1`` is
    an absolute reference (its target unknown, as ``https://`` ones), never a relative
    one of a type ``HTTPS:``; lower-case schemes and relative references keep their
    verdicts. Both paths: the walk (reference) and the one by construction. (Each also
    points at no entry: validation.dangling-reference, whatever its scheme's case.)"""
    bundle = _bundle()
    n, request = _entry(bundle, "ServiceRequest")
    wrong = [("validation.reference-type", f"Bundle.entry[{n}].resource.requester.reference")]
    cases = {
        "HTTPS://partner.example/fhir/Patient/1": [],
        "Https://partner.example/fhir/Patient/1": [],
        "https://partner.example/fhir/Patient/1": [],
        "HTTP://partner.example/fhir/Patient/1": [],
        "URN:UUID:7f4b1f3e-3c1e-4a39-9a0e-6e9c5b2f1d2a": [],
        "Patient/1": wrong,  # relative: its type is read, and not a requester's
        "PractitionerRole/1": [],
    }
    for mode in ("reference", "construct"):
        validator = Validator(mode)
        for ref, expected in cases.items():
            request["requester"] = {"reference": ref}
            for attempt in (1, 2):  # the second time a known shape (construct)
                issues = validator.check_bundle(copy.deepcopy(bundle))
                typed = [(i.code, i.location) for i in issues if i.code == wrong[0][0]]
                assert typed == expected, (mode, ref, attempt)


def test_bindings_required_error_extensible_warning_unexpandable_information() -> None:
    bundle = _bundle()
    _, request = _entry(bundle, "ServiceRequest")
    request["status"] = "finished"  # not a request-status code
    issues = validate_resource(request, all_issues=True)
    assert [(i.code, i.location, i.severity) for i in issues if i.severity == "error"] == [
        ("validation.binding", "ServiceRequest.status", "error")
    ]
    request["status"] = "active"
    # beside the referral's own number (gw-ref-1 asks for it)
    extra = len(request["identifier"])
    request["identifier"] = [
        *request["identifier"],
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ZZZ"}
                ]
            },
            "value": "1",
        },
    ]
    issues = validate_resource(request, all_issues=True)
    assert (
        "validation.binding",
        f"ServiceRequest.identifier[{extra}].type.coding[0]",
        "warning",
    ) in [(i.code, i.location, i.severity) for i in issues]
    assert not _errors(issues)
    request["identifier"][extra]["type"]["coding"][0]["system"] = "https://example.org/local"
    issues = validate_resource(request, all_issues=True)
    assert not [i for i in issues if i.location and "identifier" in i.location]


def test_slicing_and_fixed_in_a_test_profile(test_plans: Plans) -> None:
    bundle = _bundle()
    _, request = _entry(bundle, "ServiceRequest")
    request.setdefault("reasonCode", [{"text": "x"}])
    request["intent"] = "order"
    request["priority"] = "routine"
    placer = {"system": "https://fhir-gateway.example.org/test/sid/placer", "value": "1"}
    request["identifier"] = [placer, copy.deepcopy(placer)]  # the slice allows one
    issues = Validator().validate_resource(request, profile=TEST_SR)
    assert [(i.code, i.location) for i in issues] == [
        ("validation.slicing", "ServiceRequest.identifier")
    ]
    request["identifier"] = [placer]
    assert Validator().validate_resource(request, profile=TEST_SR) == []


def test_unknown_profile_is_said() -> None:
    _, request = _entry(_bundle(), "ServiceRequest")
    [issue] = validate_resource(request, profile="https://example.org/StructureDefinition/none")
    assert issue.code == "validation.profile-unknown"


def test_cached_skeleton_still_checks_values() -> None:
    """A resource of a known skeleton skips the structure checks, never the values."""
    validator = Validator()
    _, request = _entry(_bundle(), "ServiceRequest")
    assert request["meta"]["profile"] == [REFERRAL]  # intent fixed to "order"
    assert validator.validate_resource(copy.deepcopy(request)) == []
    request["intent"] = "plan"  # a request-intent code, not the fixed one
    assert [(i.code, i.location) for i in validator.validate_resource(request)] == [
        ("validation.fixed", "ServiceRequest.intent")
    ]
    # not a request-intent code either: two rules broken, each reported (as HAPI does: the
    # fixed value and the base binding are separate checks)
    request["intent"] = "sometimes"
    assert sorted((i.code, i.location) for i in validator.validate_resource(request)) == [
        ("validation.binding", "ServiceRequest.intent"),
        ("validation.fixed", "ServiceRequest.intent"),
    ]


def test_invariant_guards_and_skips() -> None:
    period = compile_invariant(
        {
            "key": "per-1",
            "severity": "error",
            "expression": "start.hasValue().not() or end.hasValue().not() or (start <= end)",
        },
        "Period",
    )
    assert not isinstance(period, str)
    assert period.guard is not None and period.guard({"start": "2026"})  # no call needed
    assert not period.holds({"start": "2026-02-01", "end": "2026-01-01"}, {})
    assert period.holds({"start": "2026-01-01", "end": "2026-02-01"}, {})
    history = compile_invariant(
        {"key": "bdl-8", "expression": "fullUrl.contains('/_history/').not()"}, "Bundle.entry"
    )
    assert not isinstance(history, str) and history.guard is not None
    assert history.guard({"fullUrl": "urn:uuid:1"})
    assert not history.guard({"fullUrl": "https://x.org/Patient/1/_history/2"})
    html = compile_invariant({"key": "x-1", "expression": "div.htmlChecks()"}, "Narrative")
    assert html == "uses htmlChecks(), which fhirpathpy lacks"
    assert "ele-1" in skipped() and "dom-3" in skipped()


def test_invariant_memo_sees_primitive_extensions() -> None:
    """An element with only extensions (``_conclusion``: its translations) exists to
    FHIRPath; the memo of outcomes must not take it for an absent one."""
    final = compile_invariant(
        {
            "key": "x-final",
            "expression": "status = 'final' implies (conclusion.exists() or result.exists())",
        },
        "DiagnosticReport",
    )
    assert not isinstance(final, str)
    translated = {"status": "final", "_conclusion": {"extension": [{"url": "x"}]}}
    assert final.holds(translated, translated)
    bare = {"status": "final"}
    assert not final.holds(bare, bare)


def test_bundle_invariants_evaluated_natively() -> None:
    """bdl-3 and bdl-7 (see invariants.yaml): a transaction entry without its request; a
    fullUrl twice."""
    bundle = _bundle()
    assert Validator().check_bundle(copy.deepcopy(bundle)) == []
    del bundle["entry"][1]["request"]
    bundle["entry"][2]["fullUrl"] = bundle["entry"][3]["fullUrl"]
    found = {
        (i.code, i.location, i.message.split(":")[0]) for i in Validator().validate_bundle(bundle)
    }
    assert ("validation.invariant", "Bundle", "constraint bdl-3 not met") in found
    assert ("validation.invariant", "Bundle", "constraint bdl-7 not met") in found


def test_every_unusable_core_invariant_is_listed_with_its_reason() -> None:
    """invariants.yaml names every base R4 invariant the validator does not evaluate."""
    from gateway.validation._definitions import definitions

    unlisted = []
    for sd in definitions().by_url.values():
        if sd.get("resourceType") != "StructureDefinition" or "snapshot" not in sd:
            continue
        if sd.get("derivation") != "specialization":
            continue
        for element in sd["snapshot"]["element"]:
            for constraint in element.get("constraint") or []:
                compiled = compile_invariant(constraint, str(sd["type"]))
                if isinstance(compiled, str) and constraint["key"] not in skipped():
                    unlisted.append(f"{constraint['key']}: {compiled}")
    assert not unlisted, sorted(set(unlisted))


def test_bundle_profile_slices_entries_by_resource_type(test_plans: Plans) -> None:
    """A Bundle profile sees its entries' resource types (their contents are validated
    one by one): one ServiceRequest entry required."""
    url = "https://fhir-gateway.example.org/test/StructureDefinition/test-order-bundle"
    bundle = _bundle()
    n, _ = _entry(bundle, "ServiceRequest")
    assert _bundle_errors(url, copy.deepcopy(bundle)) == []
    del bundle["entry"][n]
    assert _bundle_errors(url, bundle) == [("validation.slicing", "Bundle.entry")]


def _bundle_errors(url: str, bundle: dict[str, Any]) -> list[tuple[str, str | None]]:
    from gateway.validation._check import ProfileValidator

    issues = ProfileValidator().validate(bundle, "Bundle", url, None, None, True, nested=False)
    return [(i.code, i.location) for i in issues]
