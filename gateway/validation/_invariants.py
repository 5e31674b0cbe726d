"""FHIRPath invariants (``ElementDefinition.constraint``), compiled once with fhirpathpy.

fhirpathpy is slow per call (tens of µs even for small nodes), so an invariant runs only
when its outcome can differ:

* **existence-only** expressions (paths, ``exists()``, ``empty()``, ``not()``, boolean
  operators; no literal, comparison or variable) depend on which elements are present,
  never on their values: the profile validator evaluates them on the first resource of
  each skeleton and remembers the verdict with the skeleton;
* the others run per value, behind a **guard** read from the expression when it has one
  (``X.empty() or …``, ``X.startsWith('#').not() or …``, ``P = 'lit' implies …``): when
  the guard holds for the node, the invariant holds without calling fhirpathpy.

Invariants fhirpathpy cannot evaluate (a function it lacks) or that the structural check
already enforces are skipped; ``invariants.yaml`` lists them with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fhirpathpy
import yaml
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models

__all__ = ["Invariant", "compile_invariant", "skipped"]

_FUNCTION = re.compile(r"([A-Za-z_]\w*)\s*\(")
_EXISTENCE_FUNCTIONS = {"exists", "empty", "not"}
_OPERATORS = {
    "as",
    "is",
    "in",
    "and",
    "or",
    "implies",
    "xor",
}  # words before "(" that are not calls
_NAME = r"[A-Za-z_][\w.]*"
_GUARD_EMPTY = re.compile(rf"\(?({_NAME})\.empty\(\)\)?\Z")
_GUARD_NOT_EXISTS = re.compile(rf"\(?({_NAME})\.exists\(\)\.not\(\)\)?\Z")
_GUARD_NO_VALUE = re.compile(rf"\(?({_NAME})\.hasValue\(\)\.not\(\)\)?\Z")
_GUARD_NOT_CONTAINS = re.compile(rf"\(?({_NAME})\.contains\('([^']*)'\)\.not\(\)\)?\Z")
_WHERE_EMPTY = re.compile(r"where\((\w+) = '([^']*)'\)\.empty\(\)\Z")
_GUARD_PREFIX = re.compile(rf"\(?({_NAME})\.startsWith\('([^']*)'\)\.not\(\)\)?\Z")
_IMPLIES = re.compile(rf"\(?\s*({_NAME})\s*=\s*'([^']*)'\s*\)?\s+implies\s")


@cache
def skipped() -> dict[str, str]:
    """Invariant key → why it is not evaluated (``invariants.yaml``)."""
    raw = yaml.safe_load(Path(__file__).with_name("invariants.yaml").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in (raw.get("skip") or {}).items()}


def _split_or(expression: str) -> list[str]:
    """The top-level ``or`` operands (outside parentheses and quotes)."""
    parts, depth, quoted, start = [], 0, False, 0
    i = 0
    while i < len(expression):
        ch = expression[i]
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and depth == 0 and expression.startswith(" or ", i):
            parts.append(expression[start:i].strip())
            start = i + 4
            i += 3
        i += 1
    parts.append(expression[start:].strip())
    return parts


def _get(node: Any, path: str) -> list[Any]:
    if "." not in path:  # most guards name one element of the node
        got = node.get(path) if isinstance(node, dict) else None
        if isinstance(got, list):
            return got
        return [] if got is None else [got]
    values = [node]
    for name in path.split("."):
        nxt: list[Any] = []
        for v in values:
            got = v.get(name) if isinstance(v, dict) else None
            if isinstance(got, list):
                nxt += got
            elif got is not None:
                nxt.append(got)
        values = nxt
    return values


Guard = Callable[[Any], bool]


def _no_string(name: str, test: Callable[[str], bool]) -> Guard:
    return lambda node: not any(isinstance(v, str) and test(v) for v in _get(node, name))


def _holding(text: str) -> Callable[[str], bool]:
    return lambda value: text in value


def _starting(prefix: str) -> Callable[[str], bool]:
    return lambda value: value.startswith(prefix)


def _differs(name: str, literal: str) -> Guard:
    return lambda node: _get(node, name) != [literal]


def _plain(type_name: str, path: str) -> bool:
    """Whether no step of ``path`` (from a node of ``type_name``) is a choice element:
    ``_get`` reads JSON keys by name, and FHIRPath's ``abatement`` is the JSON's
    ``abatementDateTime``, ``abatementAge``...: a guard reading one would see it absent."""
    fhir = models["r4"]
    base = type_name
    for step in path.split("."):
        if base in ("BackboneElement", "Element"):
            return False  # whose elements are not known here (an invariant on one)
        full = f"{base}.{step}"
        if full in fhir["choiceTypePaths"]:
            return False
        # a type's own path goes on from the type; a backbone element's from its path
        base = fhir["path2Type"].get(full) or fhir["pathsDefinedElsewhere"].get(full, full)
    return True


def _choice_keys(type_name: str, name: str) -> list[str]:
    """The JSON keys of the choice element ``name`` of ``type_name`` (``abatement``:
    ``abatementDateTime``, ``abatementAge``...); [] when it is not one."""
    types = models["r4"]["choiceTypePaths"].get(f"{type_name}.{name}") or []
    return [name + t[:1].upper() + t[1:] for t in types]


def _absent_test(type_name: str, path: str) -> Guard | None:
    """``path`` is absent (``empty()``, ``exists().not()``): a choice element in every
    form of its value; None when the path reaches one through another element."""
    keys = _choice_keys(type_name, path) if "." not in path else []
    if not keys and not _plain(type_name, path):
        return None
    # a primitive given by its extensions alone (``_status``) exists to FHIRPath
    head, _, last = path.rpartition(".")
    keys = [f"{head}.{k}" if head else k for k in keys or [last]]
    keys += [f"{head}._{k}" if head else f"_{k}" for k in keys]
    return lambda node: not any(_get(node, key) for key in keys)


def _steps(chain: str) -> list[str] | None:
    """The dot-separated steps of ``chain`` outside parentheses and quotes; None when its
    parentheses do not balance."""
    steps, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(chain):
        if ch == "'":
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "." and depth == 0:
            steps.append(chain[start:i])
            start = i + 1
    steps.append(chain[start:])
    return steps if depth == 0 and not quoted else None


_STEP_NAME = re.compile(r"[A-Za-z_]\w*\Z")
_STEP_WHERE = re.compile(r"where\(.*\)\Z", re.DOTALL)


def _filtered(part: str) -> str | None:
    """The element path an operand ``P.where(...)[.Q.where(...)...].empty()`` (or
    ``.exists().not()``) starts from: when ``P`` is absent the filtered collection is
    empty whatever the filter says (where() never evaluates its argument on an empty
    input, so the filter may read ``%resource``), and the operand is true. obs-7's
    ``component.code.where(coding.intersect(%resource.code.coding).exists()).empty()``
    holds on every Observation without a component. None when ``part`` is not one."""
    if part.startswith("(") and part.endswith(")") and _steps(part[1:-1]) is not None:
        part = part[1:-1]
    steps = _steps(part)
    if steps is None:
        return None
    if steps[-2:] == ["exists()", "not()"]:
        steps = steps[:-2]
    elif steps[-1:] == ["empty()"]:
        steps = steps[:-1]
    else:
        return None
    names = 0
    while names < len(steps) and _STEP_NAME.match(steps[names]):
        names += 1
    rest = steps[names:]
    if not names or not rest or not _STEP_WHERE.match(rest[0]):
        return None  # (a path without a filter: _GUARD_EMPTY's)
    if not all(_STEP_NAME.match(step) or _STEP_WHERE.match(step) for step in rest):
        return None  # another function may make something of nothing (count(), iif())
    return ".".join(steps[:names])


def _absence(expression: str, type_name: str) -> Guard | None:
    """The part of the guard that tests absence alone (``X.empty() or ...``): on a node
    whose elements are known (a shape's), it decides the invariant without its values."""
    if _IMPLIES.match(expression) or _WHERE_EMPTY.match(expression):
        return None
    tests = []
    for part in _split_or(expression):
        m = _GUARD_EMPTY.match(part) or _GUARD_NOT_EXISTS.match(part) or _GUARD_NO_VALUE.match(part)
        path = m.group(1) if m else _filtered(part)
        if path is not None and (test := _absent_test(type_name, path)) is not None:
            tests.append(test)
    if not tests:
        return None
    return tests[0] if len(tests) == 1 else lambda node: any(test(node) for test in tests)


def _guard(expression: str, type_name: str) -> Guard | None:
    """A cheap test that, when true for a node, makes the invariant true (none that reads
    a choice element by name: see _plain)."""
    if implied := _IMPLIES.match(expression):
        return _differs(*implied.groups()) if _plain(type_name, implied.group(1)) else None
    if where := _WHERE_EMPTY.match(expression):  # on a list item: its own element
        return _differs(*where.groups()) if _plain(type_name, where.group(1)) else None
    tests: list[Guard | None] = []
    for part in _split_or(expression):
        if m := (
            _GUARD_EMPTY.match(part) or _GUARD_NOT_EXISTS.match(part) or _GUARD_NO_VALUE.match(part)
        ):
            tests.append(_absent_test(type_name, m.group(1)))
        elif (m := _GUARD_NOT_CONTAINS.match(part)) and _plain(type_name, m.group(1)):
            tests.append(_no_string(m.group(1), _holding(m.group(2))))
        elif (m := _GUARD_PREFIX.match(part)) and _plain(type_name, m.group(1)):
            tests.append(_no_string(m.group(1), _starting(m.group(2))))
        elif (path := _filtered(part)) is not None:
            tests.append(_absent_test(type_name, path))
    found = [test for test in tests if test is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return lambda node: any(test(node) for test in found)


@dataclass(frozen=True, slots=True)
class Invariant:
    key: str
    severity: str  # error | warning
    human: str
    expression: str
    type_name: str  # the FHIR type of the node it is evaluated on
    existence_only: bool
    guard: Guard | None
    run: Callable[..., list[Any]]
    names: frozenset[str] | None  # the element names it reads (None: it reads wider)
    native: Callable[[Any], bool] | None = None  # the same test in Python (see NATIVE)
    absence: Guard | None = None  # a guard on which elements exist alone (see _absence)
    needle: bytes | None = None  # holds on a node whose JSON lacks this (see NEEDLES)

    def holds(self, node: Any, resource: Any, memo: bool = True) -> bool:
        """Whether the invariant holds on ``node``; ``memo``: outcomes may be remembered
        by the part of the node the expression reads (off: fhirpathpy every time)."""
        if self.native is not None:
            return self.native(node)
        if self.guard is not None and self.guard(node):
            return True
        key = None
        if memo and self.names is not None and (node is resource or "%" not in self.expression):
            key = (self.key, self.type_name, _project(node, self.names))
            known = _MEMO.get(key)
            if known is not None:
                return known
        typed = ResourceNode.create_node(node, self.type_name)  # type: ignore[no-untyped-call]
        result = self.run(typed, {"resource": resource, "rootResource": resource})
        ok = result == [True] or result == []  # empty: nothing to test (FHIRPath rule)
        if key is not None:
            _remember(key, ok)
        return ok


# Outcomes of value-dependent invariants by the part of the node they can read (the
# elements their expression names): a Bundle's entry pattern, an Organization's address
# uses recur in every message although the resources around them are new.
_MEMO: dict[tuple[str, str, Any], bool] = {}
_MAX_MEMO_BYTES = 2 << 20  # a projection holds values (an Observation's): bound in bytes
_memo_bytes = 0


def _remember(key: tuple[str, str, Any], ok: bool) -> None:
    """Keep an outcome; the table is emptied when full (its size: what the projection
    prints as, measured only here, after fhirpathpy has run: cheap beside it)."""
    global _memo_bytes
    size = len(repr(key[2])) + 200  # the tuples and the dict slot besides the text
    if _memo_bytes + size > _MAX_MEMO_BYTES:
        _MEMO.clear()
        _memo_bytes = 0
    _MEMO[key] = ok
    _memo_bytes += size


_CHOICE = re.compile(r"[a-z]+")
# expressions reading beyond the elements they name: no projection stands for them
_WIDE = re.compile(r"descendants|children|repeat|resolve|ofType|\$index|\$total|extension\(")


def _names(expression: str) -> frozenset[str] | None:
    if _WIDE.search(expression):
        return None
    text = re.sub(r"'[^']*'", "", expression)
    return frozenset(re.findall(r"[A-Za-z_]\w*", text))


def _reaches(key: str, names: frozenset[str]) -> bool:
    # a primitive's extensions (``_conclusion``) are that element to FHIRPath: an element
    # with only extensions exists, so they belong to the projection too
    name = key[1:] if key.startswith("_") else key
    return name in names or ((m := _CHOICE.match(name)) is not None and m.group() in names)


def _project(value: Any, names: frozenset[str]) -> Any:
    """``value`` with only the elements ``names`` may reach, hashable."""
    if isinstance(value, dict):
        return tuple((k, _project(v, names)) for k, v in value.items() if _reaches(k, names))
    if isinstance(value, list):
        return tuple(_project(v, names) for v in value)
    return value


def _has_value(inputs: list[Any]) -> list[bool]:
    """FHIRPath hasValue(), which fhirpathpy lacks: one primitive with a value."""
    return [len(inputs) == 1 and inputs[0] is not None and not isinstance(inputs[0], (dict, list))]


# Functions the gateway gives fhirpathpy (its userInvocationTable option).
_OPTIONS = {"userInvocationTable": {"hasValue": {"fn": _has_value, "arity": {0: []}}}}


def _why_unusable(expression: str) -> str | None:
    known = set(invocation_registry) | set(_OPTIONS["userInvocationTable"])
    missing = sorted({f for f in _FUNCTION.findall(expression) if f not in known} - _OPERATORS)
    if missing:
        return "uses " + ", ".join(f + "()" for f in missing) + ", which fhirpathpy lacks"
    return None


_COMPILED: dict[tuple[str, str, str], Invariant | str] = {}


# -- invariants run in Python -----------------------------------------------------------
# The gateway's own invariants that read values which change with every record (entry
# URLs, identifiers), so no memo can serve them: fhirpathpy spends about a millisecond on
# a Bundle's gw-bun-2, more than the rest of the validation. Each is keyed by its exact
# expression text: a profile that changes the expression falls back to fhirpathpy, and
# tests/validation/test_native_invariants.py checks both agree (FHIRPath's empty counts
# as not true here, as in all()).


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _items(node: Any, key: str) -> list[Any]:
    value = node.get(key) if isinstance(node, dict) else None
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return [value] if isinstance(value, dict) else []


def _uuid_urls(bundle: Any) -> bool:
    for entry in _items(bundle, "entry"):  # a loop: run on every Bundle
        url = entry.get("fullUrl")
        if not isinstance(url, str) or not url.startswith("urn:uuid:"):
            return False
    return True


def _conditional_entry(entry: dict[str, Any]) -> bool:
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == "Provenance":
        return True
    request = entry.get("request")
    if not isinstance(request, dict):
        return False
    method = request.get("method")
    if method == "POST":
        return request.get("ifNoneExist") is not None
    return method == "PUT" and "?identifier=" in (_text(request.get("url")) or "")


def _conditional(bundle: Any) -> bool:
    for entry in _items(bundle, "entry"):  # a loop: run on every Bundle
        request = entry.get("request")
        # the usual entry inline (POST with ifNoneExist), any other by _conditional_entry
        if not (
            type(request) is dict
            and request.get("method") == "POST"
            and request.get("ifNoneExist") is not None
        ) and not _conditional_entry(entry):
            return False
    return True


def _dicom_uids_are_oids(request: Any) -> bool:
    return all(
        (_text(i.get("value")) or "").startswith("urn:oid:")
        for i in _items(request, "identifier")
        if i.get("system") == "urn:dicom:uid"
    )


def _has_referral_number(request: Any) -> bool:
    return any(
        (_text(i.get("system")) or "").endswith("/sid/referral") and i.get("value") is not None
        for i in _items(request, "identifier")
    )


_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
_ORDER_NUMBER_TYPES = ("PLAC", "FILL", "ACSN")  # a tuple: `in` compares, never hashes
_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
_REPORT_LANGUAGES = ("zh-Hans", "zh-Hant-HK", "en")


def _has_order_number(request: Any) -> bool:
    return any(
        c.get("system") == _V2_0203 and c.get("code") in _ORDER_NUMBER_TYPES
        for i in _items(request, "identifier")
        for t in _items(i, "type")
        for c in _items(t, "coding")
    )


def _not_refuted_with_status(condition: Any) -> bool:
    if not _get(condition, "clinicalStatus"):
        return True
    return not any(
        c.get("system") == _VER_STATUS and c.get("code") == "entered-in-error"
        for v in _items(condition, "verificationStatus")
        for c in _items(v, "coding")
    )


def _no_history_url(entry: Any) -> bool:
    # contains() on an absent fullUrl is empty, and so is its not(): the invariant holds
    return not any(isinstance(u, str) and "/_history/" in u for u in _get(entry, "fullUrl"))


def _report_language(report: Any) -> bool:
    found = _get(report, "language")
    # implies: an absent language holds; '=' compares one value (several: not true)
    return not found or (len(found) == 1 and found[0] in _REPORT_LANGUAGES)


def _study_ids_are_dicom(report: Any) -> bool:
    return all(i.get("system") == "urn:dicom:uid" for i in _study_identifiers(report))


def _named_or_identified(organization: Any) -> bool:
    # count() counts a null inside an array, and a name given by its extensions alone
    return bool(
        _get(organization, "identifier")
        or _get(organization, "name")
        or _get(organization, "_name")
    )


def _study_identifiers(report: Any) -> list[dict[str, Any]]:
    return [i for s in _items(report, "imagingStudy") for i in _items(s, "identifier")]


NATIVE: dict[str, Callable[[Any], bool]] = {
    "entry.all(fullUrl.startsWith('urn:uuid:'))": _uuid_urls,
    "entry.all(resource.is(Provenance) or (request.method = 'POST' and "
    "request.ifNoneExist.exists()) or (request.method = 'PUT' and "
    "request.url.contains('?identifier=')))": _conditional,
    "identifier.where(system = 'urn:dicom:uid').all(value.startsWith('urn:oid:'))": (
        _dicom_uids_are_oids
    ),
    "identifier.where(system.endsWith('/sid/referral') and value.exists()).exists()": (
        _has_referral_number
    ),
    # run on every record: each projected and memoised cost more than the rest of its
    # resource's profile checks
    "identifier.where(type.coding.where(system = 'http://terminology.hl7.org/CodeSystem/"
    "v2-0203' and (code = 'PLAC' or code = 'FILL' or code = 'ACSN')).exists()).exists()": (
        _has_order_number
    ),
    "verificationStatus.coding.where(system='http://terminology.hl7.org/CodeSystem/"
    "condition-ver-status' and code='entered-in-error').empty() or clinicalStatus.empty()": (
        _not_refuted_with_status
    ),
    "fullUrl.contains('/_history/').not()": _no_history_url,
    "language.exists() implies (language = 'zh-Hans' or language = 'zh-Hant-HK' or "
    "language = 'en')": _report_language,
    "imagingStudy.identifier.exists() implies imagingStudy.identifier.all(system = "
    "'urn:dicom:uid')": _study_ids_are_dicom,
    # org-1, on every Organization (reference data): its projection cost more than the rest
    # of the Bundle's residual invariants
    "(identifier.count() + name.count()) > 0": _named_or_identified,
}


# Invariants that hold on any node whose JSON does not hold the text: one search of a
# resource's (or a Bundle's) JSON stands for them on all its nodes. The text must be
# ASCII without quotes or backslashes, which JSON writes as they are.
NEEDLES: dict[str, bytes] = {
    "fullUrl.contains('/_history/').not()": b"/_history/",  # bdl-8, on every entry
}


def compile_invariant(constraint: dict[str, Any], type_name: str) -> Invariant | str:
    """The compiled invariant, or the reason it is skipped."""
    key = str(constraint.get("key"))
    expression = str(constraint.get("expression") or "")
    cache_key = (key, expression, type_name)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key]
    out: Invariant | str
    reason = skipped().get(key) or (_why_unusable(expression) if expression else "no expression")
    if reason:
        out = reason
    else:
        try:
            run = fhirpathpy.compile(expression, models["r4"], _OPTIONS)
        except Exception as exc:  # fhirpathpy raises bare Exceptions for syntax it lacks
            out = f"fhirpathpy cannot parse it ({type(exc).__name__})"
        else:
            functions = set(_FUNCTION.findall(expression))
            existence = functions <= _EXISTENCE_FUNCTIONS and not re.search(
                r"['%<>0-9]", expression
            )
            out = Invariant(
                key=key,
                severity=str(constraint.get("severity", "error")),
                human=str(constraint.get("human", "")),
                expression=expression,
                type_name=type_name,
                existence_only=existence,
                guard=None if existence else _guard(expression, type_name),
                run=run,
                names=None if existence else _names(expression),
                native=NATIVE.get(expression),
                absence=None if existence else _absence(expression, type_name),
                needle=NEEDLES.get(expression),
            )
    _COMPILED[cache_key] = out
    return out
