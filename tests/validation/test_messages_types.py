"""The pydantic error types that used to fall to the generic "is not valid FHIR (type)"
message, each said in FHIR's words: the element, what FHIR expects there and the JSON
kind found, never the value; the same from every validation path.

The types fhir.resources (fhir_core on pydantic-core) raises for JSON input, tried with
wrong JSON kinds for every primitive type, extra keys, arrays and objects in the wrong
place, long strings, numbers out of range, bad base64 and dates: string_type, int_type,
bool_type, bytes_type, date_type, datetime_type, time_type, dict_type, model_type,
json_invalid, model_validation_format (wrong kind: the generic reading),
int_parsing, bool_parsing, date_from_datetime_parsing, datetime_parsing, time_parsing,
date_from_datetime_inexact, int_from_float, string_pattern_mismatch, string_too_short,
string_too_long, value_error (wrong format), extra_forbidden, missing,
model_field_validation.missing, list_type (their own messages; tests/validation/
test_messages.py), and the five here: less_than_equal / greater_than_equal /
int_parsing_size (a whole number out of its type's range), finite_number (infinity or
NaN, which Python's json.loads makes of 1e400 or NaN), base64_decode, and fhir_core's
fhir-validation-wrong-resource-type (an object with a resourceType where a datatype
goes)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from gateway.validation import Validator
from gateway.validation._models import MODES

from .test_messages import JARGON, PAT, SR, _bundle, _pat, _sr

INTEGER = "a FHIR integer (a JSON whole number from -2,147,483,648 to 2,147,483,647)"
UNSIGNED = "a FHIR unsignedInt (a JSON whole number from 0 to 2,147,483,647)"
POSITIVE = "a FHIR positiveInt (a JSON whole number from 1 to 2,147,483,647)"


def _photo(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def put(bundle: dict[str, Any]) -> None:
        bundle["entry"][1]["resource"]["photo"] = [{"contentType": "image/jpeg", key: value}]

    return put


def _repeat_count(value: Any) -> Callable[[dict[str, Any]], None]:
    timing = {"repeat": {"count": value, "frequency": 1, "period": 1, "periodUnit": "d"}}
    return _sr("occurrenceTiming", timing)


# name → (the pydantic error type, the break, the value that must not show, (location, message))
CASES: dict[str, tuple[str, Callable[[dict[str, Any]], None], str, tuple[str, str]]] = {
    "integer-above-its-range": (
        "less_than_equal",
        _pat("multipleBirthInteger", 2_147_483_648),
        "2147483648",
        (
            f"{PAT}.multipleBirthInteger",
            f"'multipleBirthInteger' of Patient must be {INTEGER}, "
            "found a number of form '9999999999' (out of that range)",
        ),
    ),
    "integer-below-its-range": (
        "greater_than_equal",
        _pat("multipleBirthInteger", -2_147_483_649),
        "2147483649",
        (
            f"{PAT}.multipleBirthInteger",
            f"'multipleBirthInteger' of Patient must be {INTEGER}, "
            "found a number of form '-9999999999' (out of that range)",
        ),
    ),
    "unsigned-above-its-range": (
        "less_than_equal",
        _photo("size", 4_294_967_296),
        "4294967296",
        (
            f"{PAT}.photo[0].size",
            f"'size' of Attachment must be {UNSIGNED}, "
            "found a number of form '9999999999' (out of that range)",
        ),
    ),
    "positive-int-too-large-for-any-integer": (
        "int_parsing_size",
        _repeat_count(1e300),
        "1e+300",
        (
            f"{SR}.occurrenceTiming.repeat.count",
            f"'count' of Timing.repeat must be {POSITIVE}, "
            "found a number of form '9A+999' (out of that range)",
        ),
    ),
    "not-finite": (
        "finite_number",
        _repeat_count(float("nan")),  # json.loads("NaN")
        "nan",
        (
            f"{SR}.occurrenceTiming.repeat.count",
            "'count' of Timing.repeat must be a FHIR positiveInt (a JSON whole number, 1 or "
            "more), found a number that is not finite (infinite or NaN: JSON has no such number)",
        ),
    ),
    "bad-base64": (
        "base64_decode",
        _photo("data", "HK1234567"),
        "HK1234567",
        (
            f"{PAT}.photo[0].data",
            "'data' of Attachment must be a FHIR base64Binary (base64 text), found a string "
            "of form 'AA9999999' that does not decode (its length, padding or characters)",
        ),
    ),
    "resource-where-a-datatype-goes": (
        "fhir-validation-wrong-resource-type",
        _pat("maritalStatus", {"resourceType": "陳大文", "text": "M"}),
        "陳大文",
        (
            f"{PAT}.maritalStatus",
            "'maritalStatus' of Patient must be a CodeableConcept (a JSON object), "
            "found a resource (an object with a resourceType)",
        ),
    ),
    "resource-where-an-array-item-goes": (
        "fhir-validation-wrong-resource-type",
        _pat("identifier", [{"resourceType": "Patient", "value": "HK1234567"}]),
        "HK1234567",
        (
            f"{PAT}.identifier[0]",
            "each item of 'identifier' of Patient must be an Identifier (a JSON object), "
            "found a resource (an object with a resourceType)",
        ),
    ),
}


def test_the_cases_raise_the_error_types_they_name() -> None:
    """Each break makes pydantic raise its type (else the case tests another one)."""
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    for name, (kind, breaks, _, _) in CASES.items():
        bundle = _bundle()
        breaks(bundle)
        resources = [e["resource"] for e in bundle["entry"]]
        kinds = set()
        for resource in resources:
            try:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except ValidationError as exc:
                kinds |= {e["type"] for e in exc.errors()}
        assert kind in kinds, name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_error_type_is_said_clearly(name: str, mode: str) -> None:
    validator = Validator(mode=mode)
    assert validator.validate_bundle(_bundle()) == []  # the valid shapes are now known
    broken = copy.deepcopy(_bundle())
    _, breaks, secret, expected = CASES[name]
    breaks(broken)
    issues = validator.validate_bundle(broken)
    assert [(i.location, i.message) for i in issues] == [expected]
    assert issues[0].code == "validation.structure" and issues[0].severity == "error"
    assert "not valid FHIR" not in issues[0].message  # the generic fallback
    assert not any(word in issues[0].message for word in JARGON), issues[0].message
    assert secret not in issues[0].message and secret not in json.dumps(issues[0].to_fhir())
