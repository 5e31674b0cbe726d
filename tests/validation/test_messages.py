"""Structural issues name the element, what FHIR expects there and the JSON found, at a
clean FHIRPath location: no pydantic wording ("Input should be", "Invalid JSON", "Extra
inputs"), no ``.root``, never the value itself. Each path (reference, incremental,
construct) gives the same issues."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.validation import Validator
from gateway.validation._models import MODES

SR = "Bundle.entry[0].resource"
PAT = "Bundle.entry[1].resource"
DATETIME = "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a time zone, Z or +hh:mm"
CODE = "a JSON string with no leading, trailing or repeated whitespace"


def _bundle() -> dict[str, Any]:
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "urn:uuid:2"},
        "authoredOn": "2026-06-11T10:15:00+08:00",
    }
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "陳", "given": ["大文"]}],
        "gender": "male",
        "birthDate": "1957-09-03",
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": order,
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "fullUrl": "urn:uuid:2",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }


def _sr(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["entry"][0]["resource"].__setitem__(key, value)


def _pat(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda b: b["entry"][1]["resource"].__setitem__(key, value)


# name → (the break, [(location, message)])
CASES: dict[str, tuple[Callable[[dict[str, Any]], None], list[tuple[str, str]]]] = {
    "string-for-reference": (
        _sr("subject", "Patient/1"),
        [
            (
                f"{SR}.subject",
                "'subject' of ServiceRequest must be a Reference (a JSON object), "
                "found a string of form 'AAAAAAA/9'",
            )
        ],
    ),
    "number-for-reference": (
        _sr("subject", 7),
        [
            (
                f"{SR}.subject",
                "'subject' of ServiceRequest must be a Reference (a JSON object), "
                "found a number of form '9'",
            )
        ],
    ),
    "array-for-single-reference": (  # pydantic's location ends in .root here
        _sr("subject", [{"reference": "urn:uuid:2"}]),
        [
            (
                f"{SR}.subject",
                "'subject' of ServiceRequest takes a single value: it must be a Reference "
                "(a JSON object), found an array",
            )
        ],
    ),
    "array-for-single-code": (
        _pat("gender", ["male"]),
        [
            (
                f"{PAT}.gender",
                f"'gender' of Patient takes a single value: it must be a FHIR code ({CODE}), "
                "found an array",
            )
        ],
    ),
    "number-for-code": (
        _pat("gender", 1),
        [
            (
                f"{PAT}.gender",
                f"'gender' of Patient must be a FHIR code ({CODE}), found a number of form '9'",
            )
        ],
    ),
    "object-for-array": (
        _pat("name", {"family": "王"}),
        [(f"{PAT}.name", "'name' of Patient repeats: it must be an array, found an object")],
    ),
    "string-for-array-of-strings": (
        lambda b: b["entry"][1]["resource"]["name"][0].__setitem__("given", "大文"),
        [
            (
                f"{PAT}.name[0].given",
                "'given' of HumanName repeats: it must be an array, found a string of form '字字'",
            )
        ],
    ),
    "array-inside-array": (
        _pat("name", [[{"family": "王"}]]),
        [
            (
                f"{PAT}.name[0]",
                "each item of 'name' of Patient must be a HumanName (a JSON object), "
                "found an array",
            )
        ],
    ),
    "null-inside-array": (
        _pat("name", [None]),
        [
            (
                f"{PAT}.name",
                "'name' of Patient is an array with a null item (an item must have a value)",
            )
        ],
    ),
    "unknown-element": (
        _pat("colour", "red"),
        [(f"{PAT}.colour", "unknown element 'colour' for Patient")],
    ),
    "unknown-element-in-datatype": (
        _sr("subject", {"reference": "urn:uuid:2", "x": 1}),
        [(f"{SR}.subject.x", "unknown element 'x' for Reference")],
    ),
    "unknown-element-in-backbone": (
        lambda b: b["entry"][0].__setitem__("x", 1),
        [("Bundle.entry[0].x", "unknown element 'x' for Bundle.entry")],
    ),
    "array-in-backbone": (
        lambda b: b["entry"][0]["request"].__setitem__("url", ["ServiceRequest"]),
        [
            (
                "Bundle.entry[0].request.url",
                "'url' of Bundle.entry.request takes a single value: it must be a FHIR uri "
                "(a JSON string without whitespace), found an array",
            )
        ],
    ),
    "impossible-date": (
        _pat("birthDate", "1957-13-45"),
        [
            (
                f"{PAT}.birthDate",
                "'birthDate' of Patient must be a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD), "
                "found a string of form '9999-99-99'",
            )
        ],
    ),
    "number-for-date": (
        _pat("birthDate", 19570903),
        [
            (
                f"{PAT}.birthDate",
                "'birthDate' of Patient must be a FHIR date (YYYY, YYYY-MM or YYYY-MM-DD), "
                "found a number of form '99999999'",
            )
        ],
    ),
    "datetime-without-zone": (
        _sr("authoredOn", "2026-06-11T10:15:00"),
        [
            (
                f"{SR}.authoredOn",
                f"'authoredOn' of ServiceRequest must be a FHIR dateTime ({DATETIME}), "
                "found a string of form '9999-99-99A99:99:99'",
            )
        ],
    ),
    "date-for-instant": (
        _pat("meta", {"lastUpdated": "2026-06-11"}),
        [
            (
                f"{PAT}.meta.lastUpdated",
                "'lastUpdated' of Meta must be a FHIR instant (YYYY-MM-DDThh:mm:ss[.fff] with a "
                "time zone, Z or +hh:mm), found a string of form '9999-99-99'",
            )
        ],
    ),
    "code-with-spaces": (
        _pat("gender", "ma  le "),
        [
            (
                f"{PAT}.gender",
                f"'gender' of Patient must be a FHIR code ({CODE}), "
                "found a string of form 'AA  AA '",
            )
        ],
    ),
    "empty-code": (
        _pat("gender", ""),
        [
            (
                f"{PAT}.gender",
                f"'gender' of Patient must be a FHIR code ({CODE}), found an empty string",
            )
        ],
    ),
    "bad-id": (
        _pat("id", "not an id!"),
        [
            (
                f"{PAT}.id",
                "'id' of Patient must be a FHIR id (1 to 64 of A-Z a-z 0-9 '-' '.'), "
                "found a string of form 'AAA AA AA!'",
            )
        ],
    ),
    "string-for-boolean": (
        _pat("active", "maybe"),
        [
            (
                f"{PAT}.active",
                "'active' of Patient must be a FHIR boolean (JSON true or false), "
                "found a string of form 'AAAAA'",
            )
        ],
    ),
    "fraction-for-integer-in-contained": (
        _sr("contained", [{"resourceType": "Patient", "multipleBirthInteger": 1.5}]),
        [
            (
                f"{SR}.contained[0].multipleBirthInteger",
                "'multipleBirthInteger' of Patient must be a FHIR integer (a JSON whole number), "
                "found a number of form '9.9'",
            )
        ],
    ),
    "missing-required": (
        lambda b: b["entry"][0]["resource"].pop("status"),
        [(f"{SR}.status", "required element 'status' of ServiceRequest is missing")],
    ),
    "two-choices": (
        _sr("occurrenceDateTime", "2026-06-12"),
        [],  # completed below: occurrencePeriod too
    ),
    "number-for-url": (  # fhir.resources' url validator fails outside pydantic's errors
        _pat("photo", [{"url": 5}]),
        [
            (
                f"{PAT}.photo[0].url",
                "'url' of Attachment must be a FHIR url (a JSON string without whitespace), "
                "found a number of form '9'",
            )
        ],
    ),
    "array-for-url": (
        _pat("photo", [{"url": ["http://x"]}]),
        [
            (
                f"{PAT}.photo[0].url",
                "'url' of Attachment takes a single value: it must be a FHIR url "
                "(a JSON string without whitespace), found an array",
            )
        ],
    ),
    "unknown-element-in-nested-backbone": (
        _pat("contact", [{"name": {"family": "王"}, "relationship": [{}], "x": 1}]),
        [(f"{PAT}.contact[0].x", "unknown element 'x' for Patient.contact")],
    ),
    "missing-required-datatype": (
        _sr(
            "contained",
            [
                {
                    "resourceType": "ImagingStudy",
                    "status": "available",
                    "subject": {"reference": "#x"},
                    "series": [{"uid": "1.2"}],
                }
            ],
        ),
        [
            (
                f"{SR}.contained[0].series[0].modality",
                "required element 'modality' of ImagingStudy.series is missing",
            )
        ],
    ),
    "unknown-contained-type": (
        _pat("contained", [{"resourceType": "Nope"}]),
        [(PAT, "unknown resource type 'Nope' inside the resource")],
    ),
}


def _two_choices(b: dict[str, Any]) -> None:
    b["entry"][0]["resource"]["occurrenceDateTime"] = "2026-06-12"
    b["entry"][0]["resource"]["occurrencePeriod"] = {"start": "2026-06-12"}


CASES["two-choices"] = (
    _two_choices,
    [
        (
            SR,
            "ServiceRequest may have only one of occurrenceDateTime, occurrencePeriod, "
            "occurrenceTiming (a choice element [x] takes one type), found several",
        )
    ],
)

JARGON = ("Input should", "Invalid JSON", "Extra inputs", "Value error", "spec regex", "pattern")


def test_the_valid_bundle_passes() -> None:
    for mode in MODES:
        assert Validator(mode=mode).validate_bundle(_bundle()) == []


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_error_kind_is_said_clearly(name: str, mode: str) -> None:
    validator = Validator(mode=mode)
    assert validator.validate_bundle(_bundle()) == []  # the valid shapes are now known
    broken = copy.deepcopy(_bundle())
    breaks, expected = CASES[name]
    breaks(broken)
    issues = validator.validate_bundle(broken)
    assert [(i.location, i.message) for i in issues] == expected
    assert all(i.code == "validation.structure" and i.severity == "error" for i in issues)
    for issue in issues:
        assert not str(issue.location).endswith(".root") and ".root." not in str(issue.location)
        assert not any(word in issue.message for word in JARGON), issue.message


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_path_gives_the_reference_issues(name: str) -> None:
    broken = copy.deepcopy(_bundle())
    CASES[name][0](broken)
    verdicts = {
        mode: json.dumps([i.to_fhir() for i in Validator(mode=mode).validate_bundle(broken)])
        for mode in MODES
    }
    assert len(set(verdicts.values())) == 1, verdicts


def test_no_value_in_the_messages() -> None:
    """The values themselves (patient data) never appear, only their form."""
    broken = copy.deepcopy(_bundle())
    broken["entry"][1]["resource"]["birthDate"] = "陳大文-13-45"
    broken["entry"][1]["resource"]["gender"] = ["Chan Tai Man"]
    broken["entry"][0]["resource"]["subject"] = "Patient/HK1234567"
    issues = Validator(mode="reference").validate_bundle(broken)
    assert len(issues) == 3
    for issue in issues:
        for secret in ("陳大文", "Chan", "HK1234567"):
            assert secret not in issue.message and secret not in str(issue.location)
