"""Structural issues in an integration engineer's words (docs/validation.md, Messages).

pydantic (through fhir.resources) reports what its validators saw: "Invalid JSON",
"Input should be a valid string", "Extra inputs are not permitted", locations ending in
``root`` (a RootModel's inner value) or ``function-after``. Each error is turned here
into the FHIR element it concerns (walking the R4B model classes along the error's
location, dropping pydantic's own location parts), what FHIR expects there and what
JSON the message had instead. The value itself never appears: ``errors.shape`` gives
its form only (patient data).
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any

from pydantic_core import ErrorDetails

from ..errors import Issue, shape

# What each FHIR primitive must look like: said when a value has the wrong format.
_FORMATS = {
    "date": "YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a time "
    "zone, Z or +hh:mm",
    "instant": "YYYY-MM-DDThh:mm:ss[.fff] with a time zone, Z or +hh:mm",
    "time": "hh:mm:ss[.fff]",
    "code": "a JSON string with no leading, trailing or repeated whitespace",
    "id": "1 to 64 of A-Z a-z 0-9 '-' '.'",
    "decimal": "a JSON number",
    "integer": "a JSON whole number",
    "integer64": "a JSON whole number",
    "unsignedInt": "a JSON whole number, 0 or more",
    "positiveInt": "a JSON whole number, 1 or more",
    "boolean": "JSON true or false",
    "uri": "a JSON string without whitespace",
    "url": "a JSON string without whitespace",
    "canonical": "a JSON string without whitespace",
    "oid": "urn:oid: followed by dotted digits",
    "uuid": "urn:uuid: followed by a UUID",
    "base64Binary": "base64 text",
    "string": "a non-empty JSON string",
    "markdown": "a non-empty JSON string",
}
# pydantic's error types for "the value is of the wrong JSON kind" (a string where an
# object goes: the model tries to parse it as JSON) ...
_WRONG_KIND = {"json_invalid", "json_type", "model_validation_format", "model_type"}
_WRONG_KIND_SUFFIX = "_type"  # string_type, int_type, dict_type, model_attributes_type...
# ... and for "the value has the wrong format for its FHIR type".
_BAD_FORMAT = {"value_error", "string_too_short", "string_too_long", "int_from_float"}
_BAD_FORMAT_SUFFIXES = ("_parsing", "_inexact", "_mismatch", "greater_than", "greater_than_equal")
# The FHIR primitives written as JSON strings.
_STRING_TYPES = {
    *("string", "code", "id", "uri", "url", "canonical", "oid", "uuid", "markdown"),
    *("base64Binary", "date", "dateTime", "instant", "time"),
}
_PYTHON_PRIMITIVES = {bool: "boolean", int: "integer", float: "decimal", str: "string"}
# The whole-number types' bounds (fhir_core's Le/Ge): said when a number is outside them.
_INT32 = 2**31 - 1
_RANGES = {
    "integer": (-_INT32 - 1, _INT32),
    "unsignedInt": (0, _INT32),
    "positiveInt": (1, _INT32),
    "integer64": (-(2**63 - 1), 2**63 - 1),
}
# pydantic's error types for a whole number beyond those bounds (int_parsing_size: a
# number too large for any integer, 1e308).
_OUT_OF_RANGE = {"less_than_equal", "greater_than_equal", "int_parsing_size"}
_CHOICE = re.compile(r"from this list \[([^\]]*)\]")


class _Element(typing.NamedTuple):
    """Where an error lies: its FHIRPath location and the element's definition."""

    location: str
    owner: str  # the type holding the element (ServiceRequest, Reference, ...)
    name: str  # the element's JSON name; "" for the resource itself
    expected: str  # the element's type: "Reference" (a model), "dateTime", "resource"
    is_model: bool
    repeats: bool  # the element is an array in FHIR
    item: bool  # the location is one item of the array


def issues(
    errors: list[ErrorDetails],
    model: Any,
    data: dict[str, Any],
    prefix: str,
    model_class: typing.Callable[[str], Any],
) -> list[Issue]:
    """pydantic's ``errors()`` of ``model.model_validate(data)`` as structural Issues
    located under ``prefix``; ``model_class``: resource type → R4B class (or None)."""
    out = []
    for error in errors:
        where = _element(model, data, tuple(error["loc"]), error["type"], prefix, model_class)
        message = _message(error, where)
        out.append(Issue("validation.structure", message, location=where.location))
    return out


def _element(
    model: Any,
    data: Any,
    loc: tuple[Any, ...],
    kind: str,
    prefix: str,
    model_class: typing.Callable[[str], Any],
) -> _Element:
    """Follows ``loc`` through the model classes and the data: the FHIR element it
    names, without pydantic's own parts (``root``, ``function-after``, union tags)."""
    location, current, value, owner = prefix, model, data, _name(model)
    elem = _Element(prefix, owner, "", owner, True, False, False)
    for index, part in enumerate(loc):
        if isinstance(part, int):
            location += f"[{part}]"
            fits = isinstance(value, list) and -len(value) <= part < len(value)
            value = value[part] if fits else None
            elem = elem._replace(location=location, item=True)
            continue
        if current == "resource":  # a contained or entry resource: the class it names
            rtype = value.get("resourceType") if isinstance(value, dict) else None
            current = model_class(rtype) if isinstance(rtype, str) else None
            owner = _name(current)
        info = _field(current, part)
        if info is None:
            if kind == "extra_forbidden" and index == len(loc) - 1:  # the unknown key
                location += f".{part}"
                elem = _Element(location, owner, str(part), "", False, False, False)
            continue  # pydantic's own part of the location
        location += f".{part}"
        value = value.get(part) if isinstance(value, dict) else None
        inner, repeats = unwrap(info.annotation)
        holder, parent = owner, current
        current, expected, is_model = _kind_of(inner)
        elem = _Element(location, holder, str(part), expected, is_model, repeats, False)
        # An element defined inside its parent (Bundle.entry, Timing.repeat) has no type
        # an engineer knows (its class is BundleEntry): it is named by its path.
        nested = is_model and expected.startswith(_name(parent)) and expected != _name(parent)
        owner = f"{holder}.{part}" if nested else _name(current)
    return elem


def _field(model: Any, key: str) -> Any:
    """The pydantic FieldInfo of a JSON key of a model class, None if it has none."""
    fields = getattr(model, "model_fields", None)
    if not isinstance(fields, dict):
        return None
    info = fields.get(key)
    if info is not None and (info.alias in (None, key)):
        return info
    return next((f for f in fields.values() if f.alias == key), None)


def unwrap(annotation: Any) -> tuple[Any, bool]:
    """Optional[List[X]] → (X, True); Optional[X] → (X, False)."""
    repeats = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - fhir.resources uses typing.List
            annotation, repeats = typing.get_args(annotation)[0], True
        else:
            return annotation, repeats


def _kind_of(inner: Any) -> tuple[Any, str, bool]:
    """(the class to walk on, the FHIR type's name, whether it is a complex type)."""
    if typing.get_origin(inner) is typing.Annotated:
        metas = typing.get_args(inner)[1:]
        for meta in metas:  # fhir_core's marker names its FHIR type (not EncodedBytes)
            visit = getattr(meta, "__visit_name__", None)
            if isinstance(visit, str) and visit:
                return None, visit, False
        for meta in metas:
            name = type(meta).__name__
            if name and name[0].isupper():
                return None, name[0].lower() + name[1:], False
        inner = typing.get_args(inner)[0]
    if inner in _PYTHON_PRIMITIVES:
        return None, _PYTHON_PRIMITIVES[inner], False
    type_name = getattr(inner, "__name__", "")
    if type_name in ("ResourceType", "FHIRResourceType"):
        return "resource", "resource", True
    if type_name.endswith("Type"):
        from fhir.resources.R4B import get_fhir_model_class

        try:
            return get_fhir_model_class(type_name[: -len("Type")]), type_name[:-4], True
        except (KeyError, ValueError):
            return None, type_name[:-4], True
    return None, type_name or "value", False


def _name(model: Any) -> str:
    """A model class's FHIR type name (ServiceRequest, Reference)."""
    if model == "resource":
        return "resource"
    return str(getattr(model, "__resource_type__", None) or getattr(model, "__name__", "element"))


def _found(value: Any) -> str:
    """What JSON a value is, with its form (never its content) for a string or number."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, float) and not math.isfinite(value):  # json.loads: 1e400, NaN
        return "a number that is not finite (infinite or NaN: JSON has no such number)"
    if isinstance(value, (int, float)):
        return f"a number of form {shape(value)}"
    if value == "":
        return "an empty string"
    if isinstance(value, str):
        return f"a string of form {shape(value)}"
    return f"a {type(value).__name__}"  # not JSON data (a datetime passed in by a caller)


def _expected(where: _Element) -> str:
    """How the element's type reads in a message: 'a Reference (a JSON object)'."""
    if where.expected == "FHIRPrimitiveExtension":  # the _name sibling of a primitive
        return "a primitive's id and extensions (a JSON object)"
    if where.expected == "resource":
        return "a resource (a JSON object with a resourceType)"
    if where.is_model:
        article = "an" if where.expected[:1].lower() in "aeiou" else "a"
        return f"{article} {where.expected} (a JSON object)"
    form = _FORMATS.get(where.expected)
    return f"a FHIR {where.expected}" + (f" ({form})" if form else "")


def _message(error: ErrorDetails, where: _Element) -> str:
    kind, value = error["type"], error.get("input")
    wrong_kind = kind in _WRONG_KIND or (kind.endswith(_WRONG_KIND_SUFFIX) and kind != "list_type")
    bad_format = kind in _BAD_FORMAT or kind.endswith(_BAD_FORMAT_SUFFIXES)
    element = f"{where.name!r} of {where.owner}" if where.name else where.owner
    if kind == "extra_forbidden":
        return f"unknown element {where.name!r} for {where.owner}"
    if kind in ("model_field_validation.missing", "missing"):
        return f"required element {element} is missing"
    if kind == "list_type" and isinstance(value, list):  # fhir_core: a null inside an array
        return f"{element} is an array with a null item (an item must have a value)"
    if kind == "list_type" or (where.repeats and not where.item and wrong_kind):
        return f"{element} repeats: it must be an array, found {_found(value)}"
    if not where.name and kind == "value_error":  # a rule of the whole element
        return _element_rule(error, where)
    special = _special(kind, where, value)
    if special is not None:
        return special
    if wrong_kind or bad_format:
        return _wrong_value(where, value)
    if kind == "literal_error" or kind == "enum":
        allowed = (error.get("ctx") or {}).get("expected", "")
        return f"{element} must be one of {allowed}, found {_found(value)}"
    return f"{element} is not valid FHIR ({kind}), found {_found(value)}"


def _wrong_value(where: _Element, value: Any) -> str:
    element = f"{where.name!r} of {where.owner}"
    if isinstance(value, list) and not where.item:
        return f"{element} takes a single value: it must be {_expected(where)}, found an array"
    return _must(where, _expected(where), _found(value))


def _must(where: _Element, expected: str, found: str) -> str:
    each = "each item of " if where.item else ""
    return f"{each}{where.name!r} of {where.owner} must be {expected}, found {found}"


def _special(kind: str, where: _Element, value: Any) -> str | None:
    """The error types whose generic reading would mislead (a whole number said to be
    no whole number) or that have none: ranges, non-finite numbers, base64, a resource
    where a datatype goes. None for the others."""
    if not where.name:
        if kind == "fhir-validation-wrong-resource-type":  # the resource itself
            return f"resourceType must be {where.owner!r}, found {_found(value)}"
        return None
    bounds = _RANGES.get(where.expected)
    if kind in _OUT_OF_RANGE and bounds is not None:
        low, high = bounds
        beyond = " (out of that range)" if isinstance(value, (int, float)) else ""
        expected = f"a FHIR {where.expected} (a JSON whole number from {low:,} to {high:,})"
        return _must(where, expected, _found(value) + beyond)
    if kind == "finite_number":
        return _must(where, _expected(where), _found(value))
    if kind == "base64_decode":
        found = f"{_found(value)} that does not decode (its length, padding or characters)"
        return _must(where, _expected(where), found)
    if kind == "fhir-validation-wrong-resource-type":  # {"resourceType": ...} in a datatype
        return _must(where, _expected(where), "a resource (an object with a resourceType)")
    return None


def _element_rule(error: ErrorDetails, where: _Element) -> str:
    """A rule over several elements of one: the choice (``value[x]``) rules."""
    text = str((error.get("ctx") or {}).get("error", error.get("msg", "")))
    listed = _CHOICE.search(text)
    names = re.findall(r"'([^']+)'", listed.group(1)) if listed else []
    if names and "multiple" in text:
        return (
            f"{where.owner} may have only one of {', '.join(names)} "
            "(a choice element [x] takes one type), found several"
        )
    if names:
        return f"{where.owner} must have one of {', '.join(names)}, found none"
    return f"{where.owner} is not valid FHIR ({error['type']})"


def failure(
    exc: Exception,
    model: Any,
    data: dict[str, Any],
    prefix: str,
    model_class: typing.Callable[[str], Any],
) -> list[Issue]:
    """Issues for a model that failed outside pydantic's error list. fhir.resources'
    own validators raise so on a value of the wrong JSON kind (a url validator calls
    ``.startswith`` on a number), and on a contained resource of an unknown type
    (KeyError 'R4.NopeType'): the elements holding a non-string where FHIR wants a
    string are found by walking the data; failing that, the exception is said."""
    found = list(_non_strings(model, data, prefix, _name(model), model_class))
    if found:
        return found[:20]
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    unknown = re.fullmatch(r"'(?:R4B?\.)?([A-Za-z]+)Type'", text)
    if isinstance(exc, KeyError) and unknown:
        message = f"unknown resource type {unknown.group(1)!r} inside the resource"
    else:
        message = f"the resource does not follow the FHIR structure ({type(exc).__name__})"
    return [Issue("validation.structure", message, location=prefix)]


def _non_strings(
    model: Any,
    data: Any,
    location: str,
    owner: str,
    model_class: typing.Callable[[str], Any],
) -> typing.Iterator[Issue]:
    """Elements of a string-valued FHIR type (uri, url, code, date...) holding another
    JSON kind, in document order."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        info = _field(model, key)
        if info is None:
            continue
        inner, repeats = unwrap(info.annotation)
        current, expected, is_model = _kind_of(inner)
        listed = repeats and isinstance(value, list)
        for index, item in enumerate(value) if listed else [(None, value)]:
            where = f"{location}.{key}" + ("" if index is None else f"[{index}]")
            if current == "resource":
                rtype = item.get("resourceType") if isinstance(item, dict) else None
                sub = model_class(rtype) if isinstance(rtype, str) else None
                yield from _non_strings(sub, item, where, _name(sub), model_class)
            elif is_model:
                nested = expected.startswith(_name(model)) and expected != _name(model)
                inner_owner = f"{owner}.{key}" if nested else _name(current)
                yield from _non_strings(current, item, where, inner_owner, model_class)
            elif expected in _STRING_TYPES and item is not None and not isinstance(item, str):
                elem = _Element(where, owner, key, expected, False, repeats, index is not None)
                yield Issue("validation.structure", _wrong_value(elem, item), location=where)
