"""Validation by construction: a resource's verdict from its *shape* and a few of its values.

A mapping template makes resources of a fixed form: the same keys, list lengths and
constants in every message, and new values only where it copies the input (identifiers,
names, dates, narrative). So a resource is split, at C speed, into

* its **shape**: its compact JSON (orjson) with every string *value* cut out (keys, list
  lengths, numbers and booleans stay), and
* its **leaves**: those strings, in document order.

The first resource of a shape is analysed once against the model classes (R4B) and the
profile's check plan, which says for each leaf what can read its value:

* **free** leaves are read by nothing but their primitive type's pydantic validator
  (the structural check): identifier values, names, dates, ids, narrative;
* **reference** leaves (``Reference.reference``) are read through what they resolve to: the
  type of the entry whose fullUrl they name (reference target checks), and, as free leaves
  are, by their primitive validator;
* **bound** leaves are read by a value check: fixed/pattern values, bindings, slice
  discriminators, reference types, the profile choice (``meta.profile``) — the constant
  codes and systems of a template;
* invariants that read values (not existence-only) are **residual**: run per resource on
  the node they were found on (the shape pins every node's place).

The verdict of a resource is then a function of (shape, bound leaves, reference targets,
residual outcomes) provided each free leaf passes its primitive validator — the same
premise the skeleton cache of ``_models`` rests on. The first resource of each key is
validated by the slow path (incremental, or the reference walk when warnings are asked) and
its issue list remembered; later ones cost one orjson dump, one split on quotes, the free
leaves' validators (a steady leaf's value remembered once met twice, a varying one's never)
and the residual invariants the shape does not settle; a resource met before whole
(reference data) only the dump and a look-up. Anything the analysis cannot
place (a nested resource, a key the model lacks, a ``null``, odd keys) is left to the slow
path. docs/validation.md says more; tests/validation/test_construct.py holds the verdicts
to the reference walk's.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, TypeVar

import orjson
from fhir_core import types as fhir_types
from pydantic import ValidationError as PydanticError
from pydantic_core import SchemaValidator, core_schema

from ..errors import Issue
from ._invariants import Invariant
from ._profiles import Elem, Plans, _index

__all__ = [
    "Places",
    "Shape",
    "Shapes",
    "analyse",
    "answer",
    "dump",
    "outcome",
    "references",
    "split",
    "target",
    "targets",
    "text",
]

_LAYOUTS: dict[bytes, _Layout] = {}  # see split()
_REFERENCE = re.compile(rb'"reference":"([^"\\]*)"')  # an escaped one does not match
_KEY = re.compile(r"[A-Za-z0-9_]+\Z")
# ext-1 compares two existences (extension.exists() != value.exists()): still the shape's
_EXISTENCES = re.compile(
    r"\s*[\w.]+\.(?:exists|empty)\(\)\s*!?=\s*[\w.]+\.(?:exists|empty)\(\)\s*\Z"
)
OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

MAX_SHAPES = 2_000  # analyses kept (a mapping makes a handful of shapes per resource type)
MAX_VERDICTS = 20_000  # verdicts kept over all shapes (most are [])
MAX_EXACT_BYTES = 2 << 20  # verdicts by whole content (their JSON and what it holds)
_PROBE = 64
MAX_ACCEPTED_BYTES = 1 << 20  # free leaf values accepted, over every primitive validator
MAX_ONCE_BYTES = 64 << 10  # values and contents met once (see _Once): a span of 1,024

FREE, BOUND, REF = 0, 1, 2
Tails = tuple[tuple[Issue, str], ...]  # a verdict: issues, locations after the resource's


def dump(resource: dict[str, Any]) -> bytes | None:
    """The resource's compact JSON, or None when it is not plain JSON data (a datetime, a
    non-string key)."""
    try:
        return orjson.dumps(resource, option=OPTIONS)
    except TypeError:
        return None


def references(content: bytes) -> list[bytes] | None:
    """The ``reference`` strings of a resource's JSON, or None when one is escaped or not
    a string (the regex would not see it)."""
    raw = _REFERENCE.findall(content)
    return raw if len(raw) == content.count(b'"reference":') else None


def split(content: bytes) -> tuple[Any, list[bytes], Callable[[bytes], str]] | None:
    """(shape, leaves, the function giving a leaf's string) of a resource's JSON, or None
    when it holds a ``null`` (orjson writes NaN so too)."""
    made = split_leaves(content)
    if made is None:
        return None
    shape, leaves, escaped = made
    return shape, list(leaves), text if escaped else _DECODE


def split_leaves(content: bytes) -> tuple[Any, tuple[bytes, ...], bool] | None:
    """``split``'s shape and leaves (a tuple, as the entries' splits keep them), and
    whether the JSON held an escape (its leaves then need ``text``); None for a ``null``."""
    escaped = b"\\" in content
    if escaped:  # escapes: \\ and \" become bytes orjson never writes
        content = _unescaped(content)
    # Unescaped quotes delimit strings: odd parts are strings, even parts what lies between
    # (braces, commas, numbers); a string is a key when what follows it starts with ':'.
    parts = content.split(b'"')
    between = parts[0::2]
    joined = b"\x00".join(between)  # orjson escapes NUL: an unambiguous separator
    layout = _LAYOUTS.get(joined)
    if layout is None:
        if b"null" in joined:
            return None
        layout = _layout(between, joined)
    return layout.shape(parts), layout.values(parts), escaped


class _Layout:
    """Which parts of a split are keys, which values, for one sequence of what lies
    between the strings (``between``: that sequence joined, the first time it was met:
    the shape of every split of it holds this very object, which the shape tables then
    compare by identity, not byte by byte)."""

    __slots__ = ("between", "keys", "last", "values")

    def __init__(self, between: bytes, keys: Any, values: Any) -> None:
        self.between = between
        self.keys = keys  # parts → the keys' tuple
        self.values = values  # parts → the values' tuple (the leaves)
        self.last: tuple[tuple[bytes, ...], tuple[bytes, bytes]] | None = None

    def shape(self, parts: list[bytes]) -> tuple[bytes, bytes]:
        # the keys joined: one hash and one comparison of a few KB where a tuple of
        # them would take one per key (a comparison of ~200 short bytes costs more).
        # The same keys as the last split of this layout (a new Patient, an order:
        # new values, the same keys) give the very same shape: its joined keys' hash
        # is kept, and the shape tables compare it by identity.
        keys = self.keys(parts)
        last = self.last
        if last is not None and last[0] == keys:
            return last[1]
        shape = (self.between, b"\x00".join(keys))
        if self.last is None:  # (counted once: a later split's keys replace these)
            _count_layout(len(shape[1]) + _KEY_ITEM * len(keys))
        self.last = (keys, shape)
        return shape


def _unescaped(content: bytes) -> bytes:
    """``content`` with each escaped backslash made \\x01 and each escaped quote \\x02,
    the other escapes left as they are. A split on the backslash and a loop over the few
    there are (a narrative's quoted attributes): two-byte replaces over a whole Bundle cost
    several times more (CPython searches a two-byte pattern far slower than one byte)."""
    pieces = content.split(b"\\")
    out = [pieces[0]]
    n, end = 1, len(pieces)
    while n < end:
        piece = pieces[n]
        if not piece and n + 1 < end:  # two backslashes in a row: an escaped backslash
            out.append(b"\x01" + pieces[n + 1])
            n += 2
            continue
        out.append(b"\x02" + piece[1:] if piece[:1] == b'"' else b"\\" + piece)
        n += 1
    return b"".join(out)


def _layout(between: list[bytes], joined: bytes) -> _Layout:
    """Which parts are keys, which values, for one sequence of what lies between the
    strings (``joined``: that sequence joined, the layout's key)."""
    # part 2n+1 is the string between between[n] and between[n + 1]
    keys = [2 * n + 1 for n in range(len(between) - 1) if between[n + 1][:1] == b":"]
    values = [2 * n + 1 for n in range(len(between) - 1) if between[n + 1][:1] != b":"]
    layout = _Layout(joined, _getter(keys), _getter(values))
    if len(_LAYOUTS) >= MAX_SHAPES:
        _LAYOUTS.clear()
        _LAYOUT_BYTES[0] = 0
    _count_layout(len(joined) + _KEY_ITEM * (len(keys) + len(values)))
    _LAYOUTS[joined] = layout
    return layout


_KEY_ITEM = 56  # a key's bytes object and its slot (a layout's index, its last keys)
MAX_LAYOUT_BYTES = 8 << 20  # the layouts and the keys they keep, over every validator
_LAYOUT_BYTES = [0]


def _count_layout(size: int) -> None:
    """Count a layout's bytes (its between parts, indexes, last keys), emptying the
    table first when it would pass its bound: a layout keeps the keys of a split (a
    few KB), so the table is bounded in bytes as well as in layouts."""
    if _LAYOUT_BYTES[0] + size > MAX_LAYOUT_BYTES:
        _LAYOUTS.clear()
        _LAYOUT_BYTES[0] = 0
    _LAYOUT_BYTES[0] += size


def _getter(indexes: list[int]) -> Any:
    """A function of a list giving the tuple of its items at ``indexes``."""
    if len(indexes) == 1:
        n = indexes[0]
        return lambda items: (items[n],)
    return itemgetter(*indexes) if indexes else (lambda items: ())


_INSIDE_RESOURCE = re.compile(r"resource\.(?!exists\(\)|empty\(\))")


def _shape_only(inv: Invariant, shell: bool) -> bool:
    """Whether the invariant's outcome depends on which elements exist alone (on a Bundle's
    shell: no further into an entry's resource than its existence, which is keyed)."""
    if not inv.existence_only or (shell and _INSIDE_RESOURCE.search(inv.expression)):
        return False
    return not re.search(r"[=~]", inv.expression) or bool(_EXISTENCES.match(inv.expression))


def _escaped(raw: bytes) -> bool:
    """Whether ``raw`` holds an escape, or what split made of one. Three ``in`` scans
    (memchr) cost a fraction of one regex search for the class of the three bytes, which
    CPython's engine tries at every position: on a Bundle's varying leaves it had cost
    more than their validators."""
    return b"\\" in raw or b"\x01" in raw or b"\x02" in raw


def text(leaf: bytes) -> str:
    """A leaf's Python string (JSON-unescaped; see split for the escapes)."""
    if _escaped(leaf):
        leaf = leaf.replace(b"\x01", b"\\\\").replace(b"\x02", b'\\"')
        return str(orjson.loads(b'"' + leaf + b'"'))
    return leaf.decode()


def decoded(leaves: tuple[bytes, ...], decode: Callable[[bytes], str]) -> Iterable[str]:
    """The leaves' strings (``decode``: split's): by one search over them all when the
    content held an escape somewhere (most leaves do not: a search per leaf costs more)."""
    if decode is not _DECODE and _escaped(b"".join(leaves)):
        return map(decode, leaves)
    return map(_DECODE, leaves)


_DECODE = bytes.decode


@dataclass(slots=True, eq=False)
class Shape:
    """What the analysis of one shape found, and the verdicts met so far."""

    bound: Any  # leaves → the tuple of bound leaves (an itemgetter)
    # (leaves → free leaves, validator, adapter id): the *steady* ones once classified
    free: tuple[tuple[Any, Any, int], ...]
    refs: Any  # leaves → every Reference.reference leaf (the reference check reads them)
    keyed_refs: tuple[int, ...]  # of those (by place in refs), the free ones: keyed by
    # what they resolve to
    residual: tuple[tuple[Invariant, tuple[str | int, ...]], ...]
    verdicts: dict[Any, tuple[tuple[Issue, str], ...]] = field(default_factory=dict)
    # Where the analysis placed each kind of leaf (indexes into the leaves), which a
    # Bundle's composed plan maps into the Bundle's leaves (see _composed)
    at: Places | None = None
    # The free leaves that changed from the first resource of the shape to the next that
    # differs (the patient's name, the order's number, the dates: new in every message)
    # are *varying*: checked every time, never remembered. ``first``: the first resource's
    # free leaves and their validators, until a later resource classifies them.
    varying: Varying | None = None
    first: tuple[list[bytes], list[tuple[int, Any, int]]] | None = None
    compared: int = 0  # resources compared with the first (see _classify)
    # The steady leaves all at once (a getter; None: none, or not classified yet), and
    # their values the last time every one passed: the same values pass again
    steady: Any = None
    passed: bytes | None = None  # those values joined
    keep: int = 4_096  # the bytes ``passed`` may hold at most


# The varying leaves: (leaves → all of them, grouped by type; each group's (start, end) in
# that tuple and the validator of a list of values of its type: see _many)
Varying = tuple[Any, tuple[tuple[int, int, Any], ...]]


@dataclass(frozen=True, slots=True)
class Places:
    """The indexes of a shape's leaves by kind (``count``: how many leaves it has)."""

    count: int
    bound: tuple[int, ...]
    free: tuple[tuple[int, Any, int], ...]  # (index, TypeAdapter, the adapter's id)
    refs: tuple[int, ...]  # every Reference.reference leaf


class _Refused(Exception):
    """A resource the analysis cannot place: the full validator takes it."""


# (element, its type, whether the walk runs its invariants there: not in a slice's walk)
_Applied = tuple[Elem, str, bool]


class _Analysis:
    def __init__(self, plans: Plans, errors_only: bool, fields: Any, shell: bool) -> None:
        self.plans = plans
        self.shell = shell
        self.errors_only = errors_only
        self.fields = fields  # _models._fields: JSON key → how the model checks it
        self.kinds: list[int] = []
        self.values: list[str] = []
        self.adapters: list[tuple[Any, int]] = []
        self.residual: list[tuple[Invariant, tuple[str | int, ...]]] = []
        self.refs: list[int] = []  # leaves of Reference.reference (single strings)

    def leaf(self, value: str, check: Any, kind: int) -> None:
        self.kinds.append(kind)
        self.values.append(value)
        self.adapters.append((check[1], check[2]) if check is not None else (None, 0))

    def node(
        self,
        data: dict[str, Any],
        model: Any,
        applied: list[_Applied],
        bound: bool,
        reads: set[tuple[str, ...]],
        path: tuple[str | int, ...],
    ) -> None:
        """One dict value of the elements ``applied`` (and of their slices): what their
        own checks read, then its keys."""
        applied = list(applied)
        reads = set(reads)
        targets = False
        for elem, type_name, invariants in applied:  # grows with slices while iterating
            if elem.fixed is not None or elem.binding is not None:
                bound = True
            if elem.targets is not None:
                targets = True
                reads.add(("type",))
            if invariants:
                for inv in elem.invariants:
                    if _shape_only(inv, self.shell) or (
                        self.errors_only and inv.severity != "error"
                    ):
                        continue
                    self.residual.append((inv, path))
            if elem.slices and all(sl.match is not None for sl in elem.slices):
                for sl in elem.slices:
                    for where, _, _ in sl.match or ():
                        if where == "$this":
                            bound = True
                        elif where.startswith("$type:"):
                            reads.add(tuple(where.split(":", 1)[1].split(".")))
                        elif where != "$type":
                            reads.add(tuple(where.split(".")))
                    applied.append((sl.elem, type_name, False))
        bound = bound or () in reads
        fields = self.fields(model)
        maps = []
        for elem, type_name, invariants in applied:
            children = self.plans.children_of(elem, type_name)
            if children:
                maps.append((_index(self.plans, children, self.errors_only)[0], invariants))
        for key, value in data.items():
            if key == "resourceType" and not path and isinstance(value, str):
                self.leaf(value, None, BOUND)  # the model and the plan are chosen by it
                continue
            if not _KEY.match(key) or key == "resourceType":
                raise _Refused(key)  # a resource inside (contained, Bundle.entry): not here
            check = fields.get(key)
            if check is None or check[0] == "resource":
                raise _Refused(key)
            inner = [(hit[0], hit[1], inv) for by_key, inv in maps if (hit := by_key.get(key))]
            below = {r[1:] for r in reads if r and r[0] == key}
            is_ref = key == "reference" and not bound and () not in below
            self.value(value, check, inner, bound, below, (*path, key), is_ref, targets)

    def value(
        self,
        value: Any,
        check: Any,
        applied: list[_Applied],
        bound: bool,
        reads: set[tuple[str, ...]],
        path: tuple[str | int, ...],
        is_ref: bool = False,
        targets: bool = False,
    ) -> None:
        many = isinstance(value, list)
        for n, item in enumerate(value if many else [value]):
            at = (*path, n) if many else path
            if check[0] == "prim":
                if isinstance(item, (dict, list)):
                    raise _Refused(at)
                if isinstance(item, str):
                    # the element's own checks (fixed, binding, slicing) read the value
                    whole = bound or () in reads or any(_reads_value(e) for e, _, _ in applied)
                    if path[-1] == "reference" and not many:
                        self.refs.append(len(self.kinds))
                    kind = REF if is_ref and not whole else (BOUND if whole else FREE)
                    self.leaf(item, check, kind)
                continue
            if not isinstance(item, dict):
                raise _Refused(at)
            self.node(item, check[1], applied, bound, reads, at)


def analyse(
    plans: Plans,
    root: Elem,
    model: Any,
    resource: dict[str, Any],
    leaves: list[bytes],
    errors_only: bool,
    fields: Any,
    whole: dict[str, Any] | None = None,
) -> Shape | None:
    """The analysis of ``resource``'s shape against the model and the plan ``root``; None
    when the resource holds what the analysis does not place. ``whole``: ``resource`` is
    a Bundle without its entries' resources, whose walk meets them only as values of
    ``Bundle.entry.resource`` (their types and presence are keyed by the caller); refused
    when that element, or the entry's, has a check that would read into them."""
    shell = whole is not None
    if shell and not _shell_ok(root):
        return None
    found = _Analysis(plans, errors_only, fields, shell)
    rtype = str(resource.get("resourceType"))
    try:
        found.node(resource, model, [(root, rtype, True)], False, {("meta", "profile")}, ())
    except _Refused:
        return None
    if len(found.values) != len(leaves) or any(
        text(raw) != value for raw, value in zip(leaves, found.values, strict=True)
    ):
        return None  # the split and the walk disagree: not a shape to trust
    kinds = found.kinds
    bound = [n for n, kind in enumerate(kinds) if kind == BOUND]
    # a reference leaf is keyed by what it resolves to, not by its value: its primitive
    # validator (Reference.reference: a non-empty string) must still see each value, as a
    # free leaf's does ("" names an entry whose fullUrl is "", a uri that may be empty)
    free = [(n, *found.adapters[n]) for n, kind in enumerate(kinds) if kind != BOUND]
    return Shape(
        bound=itemgetter(*bound) if bound else None,
        free=_by_adapter(free),
        refs=_getter(found.refs) if found.refs else None,
        keyed_refs=tuple(i for i, n in enumerate(found.refs) if kinds[n] == REF),
        residual=_unsettled(found.residual, whole if whole is not None else resource, shell),
        first=(leaves, free),
        at=Places(len(leaves), tuple(bound), tuple(free), tuple(found.refs)),
    )


def _unsettled(
    residual: list[tuple[Invariant, tuple[str | int, ...]]], resource: dict[str, Any], shell: bool
) -> tuple[tuple[Invariant, tuple[str | int, ...]], ...]:
    """The residual invariants whose outcome the shape does not settle: not those on a
    node that is not an object (never run), nor those whose absence guard holds there
    (which elements exist is the shape's; on a shell, not for what reads into an entry's
    resource, which the shell's key holds by type alone)."""
    out = []
    for inv, path in residual:
        node: Any = resource
        for step in path:
            node = node[step]
        if not isinstance(node, dict):
            continue
        settled = inv.absence is not None and not (
            shell and _INSIDE_RESOURCE.search(inv.expression)
        )
        if settled and inv.absence is not None and inv.absence(node):
            continue
        out.append((inv, path))
    return tuple(out)


def _groups(free: list[tuple[int, Any, int]]) -> dict[int, tuple[Any, list[int]]]:
    """The free leaves by validator: adapter id → (the TypeAdapter, their indexes)."""
    groups: dict[int, tuple[Any, list[int]]] = {}
    for n, adapter, ident in free:
        if adapter.core_schema != _ANY_STR:
            groups.setdefault(ident, (adapter, []))[1].append(n)
    return groups


def _by_adapter(free: list[tuple[int, Any, int]]) -> tuple[tuple[Any, Any, int], ...]:
    """The free leaves grouped by validator: (getter of their leaves, the TypeAdapter's
    validator, the adapter's id)."""
    # the adapter's core validator: what TypeAdapter.validate_python calls with its defaults
    groups = _groups(free).items()
    return tuple((_getter(ns), adapter.validator, ident) for ident, (adapter, ns) in groups)


def _varying(free: list[tuple[int, Any, int]]) -> Varying | None:
    """The varying leaves, grouped by validator, taken and decoded in one go: a step per
    group (a getter, an escape test, a decode) had cost more than the validators."""
    order: list[int] = []
    runs = []
    for adapter, ns in _groups(free).values():
        runs.append((len(order), len(order) + len(ns), _many(adapter)))
        order += ns
    return (_getter(order), tuple(runs)) if runs else None


class _EachValue:
    """A list's validator that calls an item validator on each value in turn: for a
    schema pydantic-core would not nest in a list's (see _many)."""

    __slots__ = ("item",)

    def __init__(self, item: Any) -> None:
        self.item = item

    def validate_python(self, values: list[str]) -> None:
        for value in values:
            self.item.validate_python(value)


class _Dates:
    """A list's validator for FHIR's date, dateTime and instant: a value of the common
    full form (``1959-02-05``; ``2026-06-22T09:00:50+08:00``) that is a real calendar
    day is accepted at once, the others go to the type's own validator (fhir.resources'
    function, then pydantic's parser). The full form is a subset of what each accepts,
    so the verdict is the same (tests/validation/test_varying.py holds the subset to
    them on generated values); the type's function, a regex and a parse in Python, cost
    about 2 µs a value."""

    __slots__ = ("common", "form", "many")

    def __init__(self, form: re.Pattern[str], many: Any) -> None:
        self.form = form
        self.many = many
        self.common = _COMMON[form]

    def sure(self, value: str) -> bool:
        found = self.form.fullmatch(value)
        if found is None:
            return False
        year, month, day = found.groups()
        if "01" <= month <= "12" and "01" <= day <= "28":
            return True  # (two digits each: compared as text) a day every month has
        try:  # a day the calendar has: what the pydantic parser checks besides the form
            datetime.date(int(year), int(month), int(day))
        except ValueError:
            return False
        return True

    def validate_python(self, values: list[str]) -> None:
        # A run whose values are all of the common form (a month's 1st to 28th: what
        # ``sure`` accepts at once) in one search of them joined, where a value took a
        # call, a search and its groups; a NUL is no separator when one is in a value
        joined = "\x00".join(values)
        if self.common.fullmatch(joined) and joined.count("\x00") == len(values) - 1:
            return
        unsure = [value for value in values if not self.sure(value)]
        if unsure:
            self.many.validate_python(unsure)


# The full forms, each a subset of the type's regex (fhir_core.types) and of what
# pydantic parses: years 1000-9999, seconds to 59 (a leap second takes the long way),
# at most microseconds, a time always with its zone (dateTime and instant require one).
_DAY = r"([1-9][0-9]{3})-([0-9]{2})-([0-9]{2})"
_TIME = (
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)
_FULL_DATE = re.compile(_DAY)
_FULL_INSTANT = re.compile(_DAY + _TIME)
# The common forms: a full form whose day every month has (what _Dates.sure takes at
# once), as runs of values joined by NUL (_Dates.validate_python)
_COMMON_DAY = r"[1-9][0-9]{3}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"


def _run(form: str) -> re.Pattern[str]:
    return re.compile(f"(?:{form}\x00)*{form}")


_COMMON = {_FULL_DATE: _run(_COMMON_DAY), _FULL_INSTANT: _run(_COMMON_DAY + _TIME)}


def _full_form(schema: Any) -> re.Pattern[str] | None:
    """The full form of a date type's values, for its exact schema; None for another."""
    if schema.get("type") != "function-wrap":
        return None
    function = schema.get("function", {}).get("function")
    inner = schema.get("schema")
    if function == fhir_types.Date._validate and inner == {"type": "date"}:
        return _FULL_DATE
    moments = (fhir_types.DateTime._validate, fhir_types.Instant._validate)
    if function in moments and inner == {"type": "datetime", "microseconds_precision": "truncate"}:
        return _FULL_INSTANT
    return None


_MANY: dict[int, Any] = {}  # adapter id → its list validator; the adapters are _models'
# cached ones (one per primitive annotation), which live as long as the process


def _many(adapter: Any) -> Any:
    """The validator of a list of values of ``adapter``'s type: the adapter's own core
    schema as a list's items, so it accepts a list exactly when the adapter accepts each
    value (the same schema, config and functions: fhir.resources' date validators run
    per item as they would alone). One call checks a run of a Bundle's varying leaves of
    one type with the loop in pydantic-core, where a call per leaf cost more in Python
    around it than the validation (~26 leaves a Bundle; tests/validation/test_varying.py
    holds both to the same verdicts)."""
    found = _MANY.get(id(adapter))
    if found is None:
        try:
            found = SchemaValidator(core_schema.list_schema(adapter.core_schema))
        except Exception:  # a schema with definitions of its own: checked value by value
            found = _EachValue(adapter.validator)
        form = _full_form(adapter.core_schema)
        if form is not None:
            found = _Dates(form, found)
        _MANY[id(adapter)] = found
    return found


# A plain str schema (no pattern, no length: the narrative's div) accepts every string, and
# a leaf always decodes to one: its validator is not run.
_ANY_STR = {"type": "str"}


_COMPARISONS = 8  # a shape whose free leaves are the same 8 times: all steady


def _classify(shape: Shape, leaves: list[bytes]) -> None:
    """Split the shape's free leaves into steady and varying, by the first resource's and
    the first later one's that differ (a steady one that varies later is still checked, and
    remembered only when its value recurs: see Shapes._accept)."""
    if shape.first is None:
        return
    first, free = shape.first
    varying = [item for item in free if leaves[item[0]] != first[item[0]]]
    shape.compared += 1
    if not varying and shape.compared < _COMPARISONS:
        return  # the very same values (a message sent again): a later resource tells
    steady = [item for item in free if leaves[item[0]] == first[item[0]]]
    shape.free = _by_adapter(steady)
    shape.steady = _getter([item[0] for item in steady]) if steady else None
    shape.varying = _varying(varying)
    shape.first = None


def _reads_value(elem: Elem) -> bool:
    return elem.fixed is not None or elem.binding is not None or bool(elem.slices)


def _shell_ok(root: Elem) -> bool:
    entry = (root.children or {}).get("entry")
    if entry is None or entry.slices:
        return False  # a slice's walk of an entry walks its resource in full
    inner = (entry.children or {}).get("resource")
    return inner is None or not (
        inner.fixed is not None
        or inner.binding is not None
        or inner.targets is not None
        or inner.slices
        or inner.invariants
    )


def target(ref: str, urls: dict[str, str]) -> str | None:
    """What a reference resolves to for the reference-type check (``ProfileWalk._reference``)."""
    found = urls.get(ref)
    # a scheme is case-insensitive (RFC 3986 §3.1): HTTPS://... is absolute too
    local = found is None and not ref[:6].lower().startswith(("urn:", "#", "http:", "https:"))
    if local and ("/" in ref or "?" in ref):
        return ref.split("?", 1)[0].split("/", 1)[0]
    return found


def targets(refs: Iterable[str], urls: dict[str, str]) -> tuple[str | None, ...]:
    """What each reference resolves to (``target``; most name an entry: one look-up)."""
    get = urls.get
    return tuple([get(ref) or target(ref, urls) for ref in refs])


class Shapes:
    """The shapes one validator has analysed, with their verdicts. Every table is bounded
    (entries of a known small size, or bytes), and what is keyed by values remembers only
    values met twice: a patient's name, an order's number, a Patient resource never recur,
    and keeping them kept the garbage collector busy and the memory growing."""

    def __init__(self) -> None:
        self.known: dict[tuple[Any, ...], Shape | None] = {}
        self.accepted: dict[int, set[bytes]] = {}  # adapter id → leaves it accepted twice
        self.accepted_bytes = 0
        self.verdicts = 0
        # verdicts by whole content: reference data (staff, organisations) recurs whole
        self.exact: dict[Any, _Exact] = {}
        self.exact_bytes = 0
        self._once = _Once()  # values and contents met once: the second time, remembered
        self._tries: dict[str, list[int]] = {}
        self.hits = 0  # resources answered by construction (tests and benchmarks read it)

    def free_ok(self, shape: Shape, leaves: list[bytes], decode: Callable[[bytes], str]) -> bool:
        """Every free leaf passes its primitive type's validator."""
        if shape.first is not None and shape.first[0] is not leaves:
            _classify(shape, leaves)
        try:
            if shape.varying is not None:  # new in every message: no memo
                getter, runs = shape.varying
                values = list(decoded(getter(leaves), decode))
                for start, end, many in runs:
                    many.validate_python(values[start:end])
            # the steady leaves joined (split's leaves hold no NUL): one comparison of
            # bytes, where a tuple's would take a step per leaf
            steady = b"\x00".join(shape.steady(leaves)) if shape.steady is not None else None
            if steady is None or steady != shape.passed:
                self._steady_ok(shape, leaves, decode)
                if steady is not None and len(steady) <= shape.keep:
                    shape.passed = steady
        except (PydanticError, ValueError, TypeError, AttributeError, KeyError):
            return False  # fhir.resources' own validators may fail so
        return True

    def _steady_ok(self, shape: Shape, leaves: list[bytes], decode: Callable[[bytes], str]) -> None:
        """Check the shape's steady free leaves (the validators raise for a bad value):
        each group's values by one superset test when they were all accepted before."""
        tables = self.accepted
        for getter, validator, ident in shape.free:
            values = getter(leaves)
            accepted = tables[ident]  # made when the shape was added
            if accepted.issuperset(values):  # at C speed, no set built: most groups
                continue
            new = set(values).difference(accepted)
            for raw in new:
                validator.validate_python(decode(raw))
            self._accept(accepted, new)

    def _accept(self, accepted: set[bytes], new: set[bytes]) -> None:
        """Remember the accepted values met before (by any validator: each is checked by
        its own before it comes here)."""
        for raw in self._once.recurring(new):
            size = len(raw) + _SET_ITEM
            if self.accepted_bytes + size > MAX_ACCEPTED_BYTES:
                for table in self.accepted.values():
                    table.clear()
                self.accepted_bytes = 0
            accepted.add(raw)
            self.accepted_bytes += size

    def key(
        self,
        shape: Shape,
        resource: dict[str, Any],
        leaves: list[bytes],
        urls: dict[str, str],
        refs: list[str],
        content: bytes,
    ) -> Any:
        """What the verdict of a resource of ``shape`` depends on, besides the shape
        (``resource``: the whole Bundle for a shell, where the residual invariants run;
        ``refs``: its references' strings; ``content``: the JSON of the resource, or of
        the shell)."""
        return (
            shape.bound(leaves) if shape.bound is not None else (),
            targets([refs[n] for n in shape.keyed_refs], urls) if shape.keyed_refs else (),
            _outcomes(shape.residual, resource, content) if shape.residual else (),
        )

    def worth(self, rtype: str) -> bool:
        """Whether to look a resource of this type up by its content: while it is young,
        while one in eight lookups hits, and now and then (the feed may change)."""
        stats = self._tries.get(rtype)
        if stats is None:
            stats = self._tries[rtype] = [0, 0]  # [tries, hits]
        stats[0] += 1
        tries, hits = stats
        return tries <= _PROBE or hits * 8 >= tries or tries % _PROBE == 0

    def exact_answer(
        self, key: tuple[bytes, str | None, bool], urls: dict[str, str], rtype: str
    ) -> tuple[tuple[str, ...], Tails] | None:
        """(its references, its verdict) of a resource met before whole (``key``: its JSON,
        the profile asked for and the mode) when its references resolve to the same types
        again."""
        known = self.exact.get(key)
        if known is None:
            return None
        refs, found, tails = known
        if refs and targets(refs, urls) != found:
            return None
        self.hits += 1
        self._tries[rtype][1] += 1
        return refs, tails

    def remember_exact(
        self, key: tuple[bytes, str | None, bool], tails: Tails, urls: dict[str, str]
    ) -> None:
        """Remember a verdict by content the second time the content is met."""
        content = key[0]
        size = len(content) + _EXACT_ITEM
        if not self._once.seen(content):
            return
        raw = references(content)
        if raw is None:
            return
        refs = tuple([ref.decode() for ref in raw])
        if self.exact_bytes + size > MAX_EXACT_BYTES:
            self.exact.clear()
            self.exact_bytes = 0
        self.exact[key] = (refs, targets(refs, urls), tails)
        self.exact_bytes += size

    def remember(self, shape: Shape, key: Any, issues: list[Issue], where: str) -> Tails | None:
        tails = []
        for issue in issues:
            location = issue.location or ""
            if not location.startswith(where):
                return None  # placed elsewhere: not a function of this resource's place
            tails.append((issue, location[len(where) :]))
        if self.verdicts >= MAX_VERDICTS:
            for known in self.known.values():
                if known is not None:
                    known.verdicts.clear()
            self.verdicts = 0
        shape.verdicts[key] = out = tuple(tails)
        self.verdicts += 1
        return out

    def add(self, key: tuple[Any, ...], shape: Shape | None) -> None:
        if len(self.known) >= MAX_SHAPES:
            self.known.clear()
            self.verdicts = 0
        self.known[key] = shape
        for _, _, ident in shape.free if shape is not None else ():
            self.accepted.setdefault(ident, set())  # one per primitive type: bounded


_Exact = tuple[tuple[str, ...], tuple[str | None, ...], Tails]  # refs, their targets, verdict
_SET_ITEM = 80  # what a set slot and a bytes object cost besides the bytes themselves
_EXACT_ITEM = 400  # a key tuple, its dict slot, the references and the verdict's tuples


_T = TypeVar("_T", bound=Hashable)


class _Once:
    """Which values (their hashes) were met once: a table bounded in bytes, emptied when
    full, so a value met twice within its span is taken for one that recurs."""

    def __init__(self) -> None:
        self._hashes: set[int] = set()

    def seen(self, value: Hashable) -> bool:
        """Whether ``value`` was met before (a hash collision only remembers one more):
        ``recurring`` of one value, inline (each entry's split not kept asks it)."""
        digest = hash(value)
        hashes = self._hashes
        if digest in hashes:
            hashes.discard(digest)
            return True
        if len(hashes) * _HASH_ITEM >= MAX_ONCE_BYTES:
            hashes.clear()
        hashes.add(digest)
        return False

    def recurring(self, values: Iterable[_T]) -> list[_T]:
        """Those of ``values`` met before; the others are noted."""
        hashes = self._hashes
        out = []
        for value in values:
            digest = hash(value)
            if digest in hashes:
                hashes.discard(digest)
                out.append(value)
            else:
                if len(hashes) * _HASH_ITEM >= MAX_ONCE_BYTES:
                    hashes.clear()
                hashes.add(digest)
        return out


_HASH_ITEM = 64  # an int and its set slot


def _outcomes(
    residual: tuple[tuple[Invariant, tuple[str | int, ...]], ...],
    resource: dict[str, Any],
    content: bytes,
) -> tuple[bool, ...]:
    """Each residual invariant's outcome on its node (``content``: the JSON they lie in,
    which a needle is looked for in: see _invariants.NEEDLES)."""
    out = []
    for inv, path in residual:
        if inv.needle is not None and inv.needle not in content:
            out.append(True)
            continue
        node: Any = resource
        for step in path:
            node = node[step]
        out.append(outcome(inv, node, resource))
    return tuple(out)


def outcome(inv: Invariant, node: Any, resource: Any) -> bool:
    """An invariant's outcome on ``node`` of ``resource``, as the walk counts it."""
    if not isinstance(node, dict):
        return True  # the walk runs invariants on dicts only
    try:  # (holds' first steps inline: a native, else a guard that holds)
        if inv.native is not None:
            return bool(inv.native(node))
        return (inv.guard is not None and inv.guard(node)) or inv.holds(node, resource)
    except Exception:  # the walk counts a failing evaluation as holding
        return True


def answer(tails: Tails, where: str) -> list[Issue]:
    return [replace(issue, location=where + tail) for issue, tail in tails]
