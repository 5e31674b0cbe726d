"""Structural validation with the fhir.resources R4B models, made affordable.

A full ``model_validate`` of a referral Bundle costs ~3.6 ms, which alone would cap the
gateway near 275 messages/s. What the models check splits in two:

* **structure**: which keys exist, list or single value, required elements, choice
  (``value[x]``) rules. It depends only on the resource's *skeleton* (its keys and the
  kinds of their values), and every message of one mapping has one of a handful of
  skeletons;
* **values**: each primitive against its FHIR type (date, dateTime, code, id, uri, ...).

So each resource is checked like this: the first time a skeleton is seen, the full R4B
model validates the resource and the skeleton is remembered; afterwards only the values
are checked, each with the very pydantic validator the model uses for that field (read
from the model's field annotations). Anything unexpected — an unknown key, a value the
primitive validator rejects — falls back to the full model, whose errors are reported.
``tests/validation`` checks that this verdict and ``Bundle.model_validate``'s agree.

fhir.resources' R4B models are structurally identical to R4 for these resources.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticError

from ..errors import Issue, shape

__all__ = ["check_references", "validate_bundle", "validate_resource"]

_MAX_SKELETONS = 50_000  # a few KB each at most; a mapping makes a handful per type


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before"):
            out += f".{part}"
    return out


def _model_issues(model: Any, data: dict[str, Any], prefix: str) -> list[Issue]:
    try:
        model.model_validate(data)
    except PydanticError as exc:
        return [
            Issue(
                "validation.structure",
                f"{e['msg']} (value of form {shape(e.get('input'))})",
                location=_location(prefix, tuple(e["loc"])),
            )
            for e in exc.errors()[:20]
        ]
    except (ValueError, TypeError) as exc:  # raised by some fhir.resources checks
        return [Issue("validation.structure", str(exc).splitlines()[0], location=prefix)]
    return []


# -- skeletons -------------------------------------------------------------------------


def _skeleton(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _skeleton(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("[]", frozenset(_skeleton(v) for v in value))
    return type(value)


# -- value checks from the model's own field validators -------------------------------

_RESOURCE = object()  # marks a field holding any resource (Bundle.entry.resource)
_Check = tuple[str, Any]  # ("prim", TypeAdapter) | ("model", class) | ("resource", None)


def _unwrap(annotation: Any) -> Any:
    """Optional[List[X]] → X."""
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - fhir.resources uses typing.List
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation


@cache
def _fields(model: Any) -> dict[str, _Check]:
    """JSON key → how to check its values, for one model class."""
    table: dict[str, _Check] = {}
    for name, info in model.model_fields.items():
        inner = _unwrap(info.annotation)
        key = info.alias or name
        type_name = getattr(inner, "__name__", "")
        if typing.get_origin(inner) is typing.Annotated or not type_name.endswith("Type"):
            table[key] = ("prim", _adapter(inner))
        elif type_name in ("ResourceType", "FHIRResourceType"):
            table[key] = ("resource", None)
        else:
            table[key] = ("model", get_fhir_model_class(type_name[: -len("Type")]))
    return table


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def _values_ok(model: Any, data: dict[str, Any]) -> bool:
    fields = _fields(model)
    for key, value in data.items():
        if key == "resourceType":
            continue
        check = fields.get(key)
        if check is None:
            return False
        for item in value if isinstance(value, list) else (value,):
            kind, target = check
            if kind == "prim":
                try:
                    target.validate_python(item)
                except PydanticError:
                    return False
            elif not isinstance(item, dict):
                return False
            elif kind == "model":
                if not _values_ok(target, item):
                    return False
            elif not _values_ok(get_fhir_model_class(item.get("resourceType", "")), item):
                return False
    return True


class _Skeletons:
    def __init__(self) -> None:
        self._known: set[Any] = set()

    def validate(self, model: Any, data: dict[str, Any], prefix: str) -> list[Issue]:
        key = (model, _skeleton(data))
        if key in self._known and _values_ok(model, data):
            return []
        issues = _model_issues(model, data, prefix)
        if not issues and len(self._known) < _MAX_SKELETONS:
            self._known.add(key)
        return issues


_SKELETONS = _Skeletons()


def validate_resource(resource: dict[str, Any], prefix: str | None = None) -> list[Issue]:
    """Issues the R4B model would raise for ``resource``; [] when it is valid."""
    rtype = resource.get("resourceType")
    where = prefix or str(rtype)
    try:
        model = get_fhir_model_class(str(rtype))
    except KeyError:
        return [Issue("validation.structure", f"unknown resourceType {rtype!r}", location=where)]
    return _SKELETONS.validate(model, resource, where)


def validate_bundle(bundle: dict[str, Any]) -> list[Issue]:
    """Issues found by parsing ``bundle`` with the R4B models; [] when valid.

    The Bundle's own elements and each entry's resource are checked separately, so a
    new mix of entries never forces a full re-validation of resources already known.
    """
    entries = bundle.get("entry") or []
    shell = dict(bundle)
    if isinstance(entries, list):
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
            for e in entries
        ]
    issues = validate_resource(shell, "Bundle")
    for n, entry in enumerate(entries if isinstance(entries, list) else []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            issues += validate_resource(resource, f"Bundle.entry[{n}].resource")
    return issues


def _reference_values(node: Any, out: list[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            out.append(ref)
        for value in node.values():
            if isinstance(value, (dict, list)):
                _reference_values(value, out)
    elif isinstance(node, list):
        for item in node:
            _reference_values(item, out)


def _locate(node: Any, path: str, wanted: str, out: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("reference") == wanted:
            out.append(path + ".reference")
        for key, value in node.items():
            _locate(value, f"{path}.{key}", wanted, out)
    elif isinstance(node, list):
        for n, item in enumerate(node):
            _locate(item, f"{path}[{n}]", wanted, out)


def check_references(bundle: dict[str, Any]) -> list[Issue]:
    """Every reference inside the Bundle must resolve to one of its entries' fullUrl."""
    entries = bundle.get("entry", [])
    urls = {e.get("fullUrl") for e in entries}
    found: list[str] = []
    _reference_values([e.get("resource") for e in entries], found)
    dangling = sorted({ref for ref in found if ref not in urls})
    issues = []
    for ref in dangling:  # rare: only now are the paths worth building
        places: list[str] = []
        for n, entry in enumerate(entries):
            _locate(entry.get("resource"), f"Bundle.entry[{n}].resource", ref, places)
        issues += [
            Issue(
                "validation.dangling-reference",
                f"reference {ref!r} matches no entry's fullUrl",
                location=where,
            )
            for where in places
        ]
    return issues
