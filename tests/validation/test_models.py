"""The skeleton-cached validator must agree with ``Bundle.model_validate`` — on the
first sight of a shape (full model) and on every later one (value checks only)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from gateway import Converter
from gateway.validation import check_references, validate_bundle

REPO = Path(__file__).resolve().parents[2]


def _model_accepts(bundle: dict[str, Any]) -> bool:
    try:
        Bundle.model_validate(bundle)
    except Exception:
        return False
    return True


def _resource(bundle: dict[str, Any], rtype: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def _set(rtype: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: _resource(b, rtype).__setitem__(key, value)


# Each mutation breaks what a model checks; the first four keep the skeleton, so only
# the value checks of a cache hit can catch them.
MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "impossible-date": _set("Patient", "birthDate", "1957-13-45"),
    "datetime-without-zone": _set("ServiceRequest", "authoredOn", "2026-06-11T10:15:00"),
    "code-with-spaces": _set("Patient", "gender", "ma  le "),
    "bad-id": _set("Patient", "id", "not an id!"),
    "unknown-element": _set("Patient", "colour", "red"),
    "list-for-single": _set("Patient", "gender", ["male"]),
    "single-for-list": _set("Patient", "name", {"family": "王"}),
    "number-for-string": _set("Patient", "birthDate", 19570903),
    "two-choices": _set("ServiceRequest", "occurrenceDateTime", "2026-06-12"),
    "missing-required": lambda b: _resource(b, "ServiceRequest").pop("status"),
    "bad-nested-date": lambda b: _resource(b, "ServiceRequest")["occurrencePeriod"].__setitem__(
        "end", "2026-02-30"
    ),
    "bad-bundle-type": lambda b: b.__setitem__("type", "two  spaces"),
}


@pytest.fixture(scope="module")
def bundle(converter: Converter) -> dict[str, Any]:
    [record] = converter.convert((REPO / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7").read_bytes())
    assert record.bundle is not None
    return record.bundle


def test_valid_bundle_passes_first_and_cached(bundle: dict[str, Any]) -> None:
    assert validate_bundle(bundle) == [] and validate_bundle(copy.deepcopy(bundle)) == []


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_verdict_agrees_with_the_model(bundle: dict[str, Any], name: str) -> None:
    assert validate_bundle(bundle) == []  # the skeletons are now known
    broken = copy.deepcopy(bundle)
    MUTATIONS[name](broken)
    assert not _model_accepts(broken)
    issues = validate_bundle(broken)
    assert issues, f"{name} passed the gateway's validator but not the model"
    assert all(i.code == "validation.structure" for i in issues)


def test_error_location_and_no_patient_data(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    MUTATIONS["impossible-date"](broken)
    [issue] = validate_bundle(broken)
    n = next(i for i, e in enumerate(broken["entry"]) if e["resource"]["resourceType"] == "Patient")
    assert issue.location == f"Bundle.entry[{n}].resource.birthDate"
    assert "1957" not in issue.message and "'9999-99-99'" in issue.message


def test_dangling_reference_is_reported(bundle: dict[str, Any]) -> None:
    broken = copy.deepcopy(bundle)
    _resource(broken, "ServiceRequest")["subject"] = {"reference": "urn:uuid:nowhere"}
    [issue] = check_references(broken)
    assert issue.code == "validation.dangling-reference" and issue.location.endswith(
        ".subject.reference"
    )


def test_check_bundle_finds_a_dangling_reference_with_and_without_validation(
    bundle: dict[str, Any],
) -> None:
    from gateway.validation import check_bundle

    assert check_bundle(bundle) == [] and check_bundle(bundle, validate=False) == []
    broken = copy.deepcopy(bundle)
    _resource(broken, "ServiceRequest")["subject"] = {"reference": "urn:uuid:nowhere"}
    for validate in (True, False):
        [issue] = check_bundle(broken, validate)
        assert issue.code == "validation.dangling-reference"


# -- frozen shared values and the converter's own validator -------------------------------


def _mapped(converter: Converter, name: str) -> dict[str, Any]:
    """The Bundle as the mapping stage hands it on: memoised parts frozen and shared."""
    from gateway.intake.hl7v2 import read_messages

    [unit] = read_messages((REPO / "examples/hl7v2" / name).read_bytes(), converter.network.charset)
    out: list[dict[str, Any]] = []
    converter.finish(unit, after=lambda s, r, o: out.append(o) if s.name == "mapping" else None)
    return out[0]


def test_a_mapped_bundle_with_frozen_parts_is_judged_as_its_plain_copy(
    converter: Converter,
) -> None:
    from gateway.shared import is_frozen
    from gateway.validation import Validator

    mapped = _mapped(converter, "ref_i12_lax2_to_njmu2.hl7")
    frozen = [
        e["resource"]["identifier"]
        for e in mapped["entry"]
        if is_frozen(e["resource"].get("identifier"))
    ]
    assert frozen  # memoised parts are shared, frozen
    Bundle.model_validate(mapped)  # pydantic takes the dict and list subclasses
    for validator in (Validator(), Validator()):
        assert validator.check_bundle(mapped) == []
        assert validator.check_bundle(mapped) == []  # second sight: skeletons cached
        assert validator.check_bundle(copy.deepcopy(mapped)) == []


def test_a_reference_inside_a_frozen_value_is_still_checked() -> None:
    from gateway.shared import freeze
    from gateway.validation import Validator

    patient = {"resourceType": "Patient", "id": "p1"}
    report = freeze(
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "code": {"text": "CT"},
            "subject": {"reference": "urn:uuid:nowhere"},
        }
    )
    assert report.holds_refs and not report["code"].holds_refs
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:p1",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": "urn:uuid:r1",
                "resource": report,
                "request": {"method": "POST", "url": "DiagnosticReport"},
            },
        ],
    }
    validator = Validator()
    for _ in range(2):  # the second time the frozen parts' skeletons are known
        for validate in (True, False):
            [issue] = validator.check_bundle(bundle, validate)
            assert issue.code == "validation.dangling-reference"
            assert issue.location == "Bundle.entry[1].resource.subject.reference"


def test_each_converter_owns_its_validator(settings: Any) -> None:
    from gateway.validation import _models

    first, second = Converter(settings), Converter(settings)
    assert first.validator is not second.validator
    default = _models._default()
    known = len(default._skeletons._known)
    first.convert((REPO / "examples/hl7v2/omi_o23_nsch_ct.hl7").read_bytes())
    assert len(default._skeletons._known) == known  # the module's default learnt nothing
    assert first.validator._skeletons._known and not second.validator._skeletons._known
