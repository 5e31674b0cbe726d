"""Profile validation driven by StructureDefinition snapshots.

Each snapshot is compiled once into a tree of :class:`Elem` (a *check plan*): per JSON key
the element's cardinality, fixed/pattern value, binding (expanded once), reference target
types, slices and compiled invariants. Complex datatypes the snapshot does not expand
(``ServiceRequest.code`` is a CodeableConcept) take their children from the datatype's own
base definition, compiled once too.

The checks fall in two kinds, as in the structural check (``_models``):

* **structure**: cardinality and existence-only invariants depend only on which elements
  are present, i.e. on the resource's skeleton. A walk that finds none of them failing
  records the (plan, skeleton) pair; later resources of that skeleton skip them;
* **values**: fixed/pattern values, bindings, slice membership, reference targets,
  counts against a ``max`` above one, and value-dependent invariants, checked on every
  resource. The first walk of a skeleton records where they applied (a :data:`Program`:
  the tree of the keys leading to checked elements); later resources of that skeleton run
  the program, not a walk, in their own key order, so their issues come in the full
  walk's order (the pipeline asks for errors only: extensible bindings and warning
  invariants are then left out; with warnings, the existence-only invariants' warnings
  are checked in their place too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import Issue, shape
from ..shared import FrozenDict
from ._definitions import Definitions
from ._invariants import Invariant, compile_invariant
from ._terminology import Expansion, expand

__all__ = ["Elem", "Plans", "ProfileWalk"]

_CORE = "http://hl7.org/fhir/StructureDefinition/"


def _is_primitive(code: str) -> bool:
    return code[:1].islower() or code.startswith("http://hl7.org/fhirpath/")


@dataclass(slots=True, eq=False)
class Slice:
    name: str
    elem: Elem
    # (path, value, pattern?) that an item must carry; ("$type", name, False) for type
    match: list[tuple[str, Any, bool]] | None  # None: not evaluable (see _slice_match)


@dataclass(slots=True, eq=False)
class Elem:
    id: str
    name: str  # the JSON name (no [x])
    min: int
    max: int | None  # None: unbounded
    types: tuple[str, ...]
    choice: bool
    fixed: tuple[str, Any] | None = None  # ("fixed" | "pattern", value)
    binding: tuple[str, str] | None = None  # (strength, ValueSet URL)
    targets: frozenset[str] | None = None  # allowed resource types of a Reference
    invariants: list[Invariant] = field(default_factory=list)
    children: dict[str, Elem] | None = None  # None: from the datatype's definition
    slices: list[Slice] = field(default_factory=list)
    closed: bool = False
    profile: str | None = None  # the type's profile (an extension slice's definition)

    def json_keys(self) -> list[tuple[str, str]]:
        """(JSON key, type) pairs this element may appear as."""
        if not self.choice:
            return [(self.name, self.types[0] if self.types else "")]
        return [(self.name + t[:1].upper() + t[1:], t) for t in self.types]


def _strip_slices(element_id: str) -> str:
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


# Every element may hold extensions, and an extension's value may be of any type: counted
# in, they would make every subtree "hold value checks". So a known skeleton's walk skips
# the extensions of elements without other value checks (their values were checked on the
# skeleton's first resource, and each time by the structural check's primitive validators);
# an element that is walked has its extensions walked too.
_EXTENSIONS = frozenset({"extension", "modifierExtension"})


_MISSING: Any = object()


class Plans:
    """Compiled check plans, by StructureDefinition URL and by datatype."""

    def __init__(self, defs: Definitions) -> None:
        self.defs = defs
        self._plans: dict[str, Elem | None] = {}
        self._needs: dict[tuple[int, str, bool], bool] = {}
        self._expansions: dict[str, Expansion | None] = {}
        self.skipped_invariants: dict[str, str] = {}

    def plan(self, url_or_type: str) -> Elem | None:
        found: Elem | None = self._plans.get(url_or_type, _MISSING)  # asked per resource
        if found is not _MISSING:
            return found
        if url_or_type not in self._plans:
            self._plans[url_or_type] = None  # recursion guard (Extension.extension)
            sd = self.defs.structure(url_or_type)
            self._plans[url_or_type] = self._compile(sd) if sd and "snapshot" in sd else None
        return self._plans[url_or_type]

    def type_children(self, type_name: str) -> dict[str, Elem]:
        root = self.plan(type_name)
        return root.children or {} if root else {}

    # -- compiling a snapshot -------------------------------------------------------
    def _compile(self, sd: dict[str, Any]) -> Elem:
        by_id: dict[str, Elem] = {}
        root: Elem | None = None
        raw_by_id: dict[str, dict[str, Any]] = {}
        for raw in sd["snapshot"]["element"]:
            eid = str(raw.get("id") or raw["path"])
            raw_by_id[eid] = raw
            elem = self._elem(raw, eid, str(sd.get("type")))
            by_id[eid] = elem
            if root is None:
                root = elem
                root.children = {}
                continue
            parent_id, _, last = eid.rpartition(".")
            if ":" in last:  # a slice: belongs to the sliced element
                base_id = parent_id + "." + last.split(":", 1)[0]
                owner = by_id.get(base_id)
                if owner is not None:
                    owner.slices.append(Slice(last.split(":", 1)[1], elem, []))
                continue
            parent = by_id.get(parent_id)
            if parent is None:
                continue
            if parent.children is None:
                parent.children = {}
            parent.children[elem.name] = elem
        assert root is not None
        for eid, elem in by_id.items():
            raw = raw_by_id[eid]
            if raw.get("contentReference") and elem.children is None:
                target = by_id.get(str(raw["contentReference"]).split("#", 1)[-1])
                if target is not None:
                    elem.children = target.children
                    elem.types = target.types
            if raw.get("slicing"):
                elem.closed = raw["slicing"].get("rules") == "closed"
                discriminators = raw["slicing"].get("discriminator") or []
                for sl in elem.slices:
                    sl.match = self._slice_match(sl.elem, discriminators, by_id)
        return root

    def _elem(self, raw: dict[str, Any], eid: str, sd_type: str) -> Elem:
        path = str(raw["path"])
        name = path.rsplit(".", 1)[-1]
        choice = name.endswith("[x]")
        types = tuple(str(t.get("code")) for t in raw.get("type") or [])
        mx = str(raw.get("max", "*"))
        elem = Elem(
            id=eid,
            name=name[:-3] if choice else name,
            min=int(raw.get("min", 0)),
            max=None if mx == "*" else int(mx),
            types=types,
            choice=choice,
        )
        for key, value in raw.items():
            if key.startswith("fixed"):
                elem.fixed = ("fixed", value)
            elif key.startswith("pattern"):
                elem.fixed = ("pattern", value)
        binding = raw.get("binding")
        if (
            binding
            and binding.get("valueSet")
            and binding.get("strength")
            in (
                "required",
                "extensible",
            )
        ):
            elem.binding = (str(binding["strength"]), str(binding["valueSet"]))
        targets: set[str] = set()
        for t in raw.get("type") or []:
            if t.get("profile") and elem.profile is None:
                elem.profile = str(t["profile"][0])
            for profile in t.get("targetProfile") or []:
                target_sd = self.defs.structure(str(profile))
                targets.add(
                    str(target_sd["type"]) if target_sd else str(profile).rsplit("/", 1)[-1]
                )
        if targets and "Resource" not in targets:
            elem.targets = frozenset(targets)
        node_type = sd_type if "." not in path else (types[0] if len(types) == 1 else "")
        for constraint in raw.get("constraint") or []:
            if not node_type or _is_primitive(node_type):
                key = str(constraint.get("key"))
                if key != "ele-1":
                    self.skipped_invariants[key] = "on a primitive value or a choice of types"
                continue
            compiled = compile_invariant(constraint, node_type)
            if isinstance(compiled, str):
                self.skipped_invariants[str(constraint.get("key"))] = compiled
            else:
                elem.invariants.append(compiled)
        return elem

    def _slice_match(
        self, elem: Elem, discriminators: list[dict[str, Any]], by_id: dict[str, Elem]
    ) -> list[tuple[str, Any, bool]] | None:
        """What an item must carry to be in the slice; None when a discriminator is one the
        validator does not evaluate (profile, exists, resolve()): the slicing is then not
        checked, rather than every item said to match no slice."""
        out: list[tuple[str, Any, bool]] = []
        for disc in discriminators:
            kind, path = disc.get("type"), str(disc.get("path", "$this"))
            target = elem if path == "$this" else by_id.get(elem.id + "." + path)
            if kind == "type" and "(" not in path:
                if target is None or not target.types:
                    return None
                wanted = target.types[0]
                if target.profile is not None:  # a profiled resource: its type
                    found = self.defs.structure(target.profile)
                    wanted = str(found["type"]) if found else wanted
                out.append(("$type" if path == "$this" else f"$type:{path}", wanted, False))
                continue
            if kind not in ("value", "pattern") or "(" in path:
                return None
            if target is not None and target.fixed is not None:
                out.append((path, target.fixed[1], target.fixed[0] == "pattern"))
            elif path == "url" and elem.types == ("Extension",):
                profile = self._extension_url(elem)
                if profile:
                    out.append(("url", profile, False))
            elif elem.fixed is not None and path != "$this":  # pattern on the slice itself
                value = _at(elem.fixed[1], path)
                if value is None:
                    return None
                out.append((path, value, True))
            else:
                return None
        return out

    def _extension_url(self, elem: Elem) -> str | None:
        return elem.profile

    def expansion(self, url: str) -> Expansion | None:
        if url not in self._expansions:
            self._expansions[url] = expand(self.defs, url)
        return self._expansions[url]

    def children_of(self, elem: Elem, type_name: str) -> dict[str, Elem] | None:
        """The elements inside a value of ``elem`` of type ``type_name``."""
        if elem.children is not None:
            return elem.children
        if elem.profile is not None and (own := self.plan(elem.profile)) is not None:
            return own.children
        if type_name and not _is_primitive(type_name) and type_name != "Resource":
            return self.type_children(type_name)
        return None

    def needs(self, elem: Elem, type_name: str, errors_only: bool) -> bool:
        """Whether a value of ``elem`` (of that type) holds a check on values: the walk of
        a known skeleton visits only such subtrees. Inside a cycle (Extension.extension):
        yes, to be safe."""
        token = (id(elem), type_name, errors_only)
        known = self._needs.get(token)
        if known is not None:
            return known
        self._needs[token] = True  # in progress
        if type_name == "Resource" or _checks_values(elem, errors_only):
            out = True
        else:
            children = self.children_of(elem, type_name) or {}
            out = any(
                self.needs(child, t, errors_only)
                for name, child in children.items()
                if name not in _EXTENSIONS
                for _, t in child.json_keys()
            )
        self._needs[token] = out
        return out


def _checks_values(elem: Elem, errors_only: bool) -> bool:
    """Whether ``elem`` itself has a check on values (see the module doc)."""
    if elem.slices or elem.targets or elem.fixed is not None:
        return True
    if elem.binding is not None and (elem.binding[0] == "required" or not errors_only):
        return True
    if (elem.max is not None and elem.max > 1) or elem.min > 1:
        return True
    return any(
        not inv.existence_only and (inv.severity == "error" or not errors_only)
        for inv in elem.invariants
    )


def _at(value: Any, path: str) -> Any:
    for name in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(name)
    return value


def _contains(value: Any, pattern: Any) -> bool:
    """FHIR pattern[x]: every element of the pattern is in the value."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(_contains(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(_contains(i, p) for i in items) for p in pattern)
    return bool(value == pattern)


def _matches(item: Any, match: list[tuple[str, Any, bool]] | None, type_name: str) -> bool:
    if not match:
        return False
    for path, want, pattern in match:
        if path.startswith("$type"):
            inner = item if path == "$type" else _at(item, path.split(":", 1)[1])
            got = (
                inner.get("resourceType")
                if isinstance(inner, dict) and "resourceType" in inner
                else type_name
            )
            if got != want:
                return False
            continue
        got = item if path == "$this" else _at(item, path)
        if not (_contains(got, want) if pattern else got == want):
            return False
    return True


_FROZEN_OK: dict[tuple[int, int, bool, bool, bool], Any] = {}  # (elem, subtree, mode) → the subtree
_MAX_FROZEN = 100_000
_Index = tuple[dict[str, tuple[Elem, str, bool]], list[Elem]]
_INDEX: dict[tuple[int, bool], tuple[dict[str, Elem], _Index]] = {}


def _index(plans: Plans, children: dict[str, Elem], errors_only: bool) -> _Index:
    """JSON key → (element, its type, whether its subtree has value checks), and the
    required elements, of one children map."""
    known = _INDEX.get((id(children), errors_only))
    if known is None or known[0] is not children:
        by_key = {
            k: (e, t, plans.needs(e, t, errors_only))
            for e in children.values()
            for k, t in e.json_keys()
        }
        known = (children, (by_key, [e for e in children.values() if e.min > 0]))
        _INDEX[(id(children), errors_only)] = known
    return known[1]


# Slice walks found clean, by what they read (ProfileWalk._verdict_key)
_SLICE_OK: set[tuple[Any, ...]] = set()
# String values found clean at an element (fixed value, binding: a function of the
# element and the string alone); the element itself in the key, kept alive by it
_STRING_OK: set[tuple[Elem, str, bool, str]] = set()


def _content(value: Any) -> Any:
    """A value's whole content as a key (its JSON, the kind of a primitive beside it:
    1 == True), or None when it holds a reference or cannot be serialised."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or kind is float:
        return (kind, value)
    try:
        data = orjson.dumps(value)
    except TypeError:
        return None
    return None if b'"reference"' in data else data


def _shape(value: Any) -> Any:
    """Keys, kinds and list lengths (what cardinality and required elements read); the
    content of extensions (a full walk checks their values and slices)."""
    if isinstance(value, dict):
        out = []
        for key, inner in value.items():
            part = _content(inner) if key in _EXTENSIONS else _shape(inner)
            if part is None:
                return None
            out.append((key, part))
        return tuple(out)
    if isinstance(value, list):
        items = [_shape(v) for v in value]
        return None if None in items else ("[]", *items)
    return type(value)


# What a known skeleton's resources need checked, as a tree the shape of its first
# resource: per JSON key met, a Step (the element, its type, whether its own checks read
# values, whether its list's length is a value, the steps below it, None when none). The
# steps below a resource inside (contained) are keyed "#Type", that resource's type. Only
# the keys leading to a check are kept. A known skeleton's resources run it in their own
# key order (``ProfileWalk.run``), so its issues come in the full walk's order: element
# by element in document order, each value's own checks before its children's, a list's
# slicing after its items. (The items of one list may differ in skeleton and come in any
# order: the steps of a list's items are the union of what its items met.)
Step = tuple["Elem", str, bool, bool, "Program | None"]
Program = dict[str, Step]


def _pruned(recorded: dict[str, list[Any]]) -> Program | None:
    """The recorded tree (Steps as lists) without the keys that lead to no check."""
    out: Program = {}
    for key, (elem, type_name, own, count, below) in recorded.items():
        inner = _pruned(below) if below else None
        if own or count or inner is not None:
            out[key] = (elem, type_name, own, count, inner)
    return out or None


class ProfileWalk:
    """One resource's walk against a plan; issues accumulate in ``issues``."""

    __slots__ = (
        "errors_only",
        "invariants",
        "issues",
        "memo",
        "nested",
        "plans",
        "recording",
        "resource",
        "structure_failed",
        "urls",
        "values_only",
    )

    def __init__(
        self,
        plans: Plans,
        resource: Any,
        values_only: bool,
        urls: dict[str, str] | None,
        errors_only: bool = False,
    ) -> None:
        self.plans = plans
        self.errors_only = errors_only  # the pipeline's question: warnings are not asked
        self.issues: list[Issue] = []
        self.structure_failed = False
        self.values_only = values_only
        self.resource = resource
        self.urls = urls or {}
        # when recording the program (see Program): the steps of the node being walked
        self.recording: dict[str, list[Any]] | None = None
        self.nested = True  # walk resources inside (contained); not a Bundle's entries
        # a slice's walk reports no invariant (the item's own walk did): it runs none
        self.invariants = True
        # the memos shared between resources (frozen subtrees, slice walks, invariant
        # outcomes); off for the reference validator, which walks everything every time
        self.memo = True

    def record(self) -> dict[str, list[Any]]:
        """Record the skeleton's program while walking: the tree returned, as lists
        (``_pruned`` makes it a Program)."""
        self.recording = {}
        return self.recording

    def _record(self, elem: Elem, key: str, type_name: str, many: bool) -> dict[str, list[Any]]:
        """The step of ``key`` in the node being recorded; the steps below it."""
        assert self.recording is not None
        step = self.recording.get(key)
        if step is None:
            errors_only = self.errors_only
            # with warnings asked, the existence-only warnings too: they come in their
            # place (not kept aside), and the items of a list may come in another order
            own = _checks_values(elem, errors_only) or (
                not errors_only
                and any(i.existence_only and i.severity != "error" for i in elem.invariants)
            )
            # a list's length is a value (skeletons hold a list's kinds of items, not
            # how many): checked where a count can break the bounds
            count = many and (elem.max is not None or elem.min > 1)
            step = self.recording[key] = [elem, type_name, own, count, {}]
        elif step[0] is not elem or step[1] != type_name:
            # two elements at one place (not met: a key names one element of its parent):
            # no program then; the skeleton's resources are walked in full every time
            self.structure_failed = True
        below: dict[str, list[Any]] = step[4]
        return below

    def _issue(self, code: str, message: str, where: str, severity: str = "error") -> None:
        self.issues.append(Issue(code, message, location=where, severity=severity))

    def node(self, children: dict[str, Elem], data: dict[str, Any], where: str) -> None:
        by_key, required = _index(self.plans, children, self.errors_only)
        if not self.values_only:
            for elem in required:
                if not any(k in data for k, _ in elem.json_keys()):
                    self._cardinality(elem, 0, f"{where}.{elem.name}")
        values_only = self.values_only
        for key, value in data.items():
            hit = by_key.get(key)
            if hit is None or (values_only and not hit[2]):
                continue  # resourceType, _primitive extensions; a subtree without value checks
            self.element(hit[0], key, hit[1], value, where)

    def element(self, elem: Elem, key: str, type_name: str, value: Any, where: str) -> None:
        items = value if isinstance(value, list) else [value]
        loc = f"{where}.{key}"
        many = isinstance(value, list)
        wrong = (elem.max is not None and len(items) > elem.max) or len(items) < elem.min
        # a count is a value unless the bounds are 0/1 (then it is the skeleton's)
        if wrong and (elem.max is None or elem.max > 1 or elem.min > 1 or not self.values_only):
            self._cardinality(elem, len(items), loc)
        recording = self.recording
        if recording is not None:  # recording the skeleton's program (see Program)
            self.recording = self._record(elem, key, type_name, many)
        for n, item in enumerate(items):
            self.item(elem, item, type_name, f"{loc}[{n}]" if many else loc)
        if recording is not None:
            self.recording = recording
        if elem.slices:
            self._slicing(elem, items, type_name, loc, many)

    def run(self, program: Program, data: dict[str, Any], where: str) -> None:
        """The value checks of a known skeleton (its program, recorded by its first
        resource's walk) on ``data``, a node at ``where``: in ``data``'s key order, each
        value's own checks before those below it, as the full walk goes."""
        for key, value in data.items():
            step = program.get(key)
            if step is None:
                continue  # resourceType, a subtree without value checks
            elem, type_name, own, count, below = step
            loc = f"{where}.{key}"
            if not isinstance(value, list):  # (a FrozenList too: a mapping's shared part)
                self._run_item(elem, type_name, own, below, value, loc)
                if own and elem.slices:
                    self._slicing(elem, [value], type_name, loc, False)
                continue
            if count:
                n = len(value)
                if (elem.max is not None and n > elem.max) or n < elem.min:
                    self._cardinality(elem, n, loc)
            for n, item in enumerate(value):
                self._run_item(elem, type_name, own, below, item, f"{loc}[{n}]")
            if own and elem.slices:
                self._slicing(elem, value, type_name, loc, True)

    def _run_item(
        self, elem: Elem, type_name: str, own: bool, below: Program | None, item: Any, loc: str
    ) -> None:
        """One value of a program's step: its own checks, then the steps below it."""
        if own:
            if type(item) is str:  # a code, a system: its verdict is its own
                token = (elem, type_name, self.errors_only, item)
                if token not in _STRING_OK:
                    before = len(self.issues)
                    self.own(elem, item, type_name, loc)
                    if len(self.issues) == before:
                        if len(_STRING_OK) >= _MAX_FROZEN:
                            _STRING_OK.clear()
                        _STRING_OK.add(token)
                return
            self.own(elem, item, type_name, loc)
        if below is None or not isinstance(item, dict):
            return
        if elem.children is None and "resourceType" in item:  # as _item: a resource inside
            inside = below.get("#" + str(item["resourceType"]))
            if inside is not None and inside[4] is not None:
                self.run(inside[4], item, loc)
            return
        self.run(below, item, loc)

    def _cardinality(self, elem: Elem, count: int, loc: str) -> None:
        self.structure_failed = True
        bound = "*" if elem.max is None else str(elem.max)
        self._issue(
            "validation.cardinality",
            f"{elem.id} has {count} value(s), the profile allows {elem.min}..{bound}",
            loc,
        )

    def item(self, elem: Elem, item: Any, type_name: str, loc: str) -> None:
        # A frozen subtree without references (a memoised fragment: staff, organisations,
        # codes) never changes: once it passed an element's checks, it passes them again.
        frozen = (
            type(item) is FrozenDict
            and not item.holds_refs
            and self.recording is None
            and self.memo
        )
        if frozen:
            token = (id(elem), id(item), self.values_only, self.errors_only, self.invariants)
            if _FROZEN_OK.get(token) is item:
                return
            before = len(self.issues)
        self._item(elem, item, type_name, loc)
        if frozen and len(self.issues) == before:
            if len(_FROZEN_OK) >= _MAX_FROZEN:
                _FROZEN_OK.clear()
            _FROZEN_OK[token] = item

    def _item(self, elem: Elem, item: Any, type_name: str, loc: str) -> None:
        self.own(elem, item, type_name, loc)
        if not isinstance(item, dict):
            return
        if elem.children is None and "resourceType" in item:  # Bundle.entry.resource, contained
            if not self.nested:
                return  # a Bundle's entries are validated one by one
            rtype = str(item["resourceType"])
            root = self.plans.plan(rtype)
            recording = self.recording
            if root and root.children and recording is not None:
                # the program keeps each type's steps apart: a contained Patient and
                # Organization both have an 'address', under different rules
                step = recording.setdefault("#" + rtype, [root, rtype, False, False, {}])
                self.recording = step[4]
                self.node(root.children, item, loc)
                self.recording = recording
                return
            children = root.children if root else None
        else:
            children = self.plans.children_of(elem, type_name)
        if children:
            self.node(children, item, loc)

    def own(self, elem: Elem, item: Any, type_name: str, loc: str) -> None:
        """The element's own checks on one of its values (not its children's)."""
        if elem.fixed is not None:
            kind, want = elem.fixed
            if not (_contains(item, want) if kind == "pattern" else item == want):
                self._issue(
                    "validation.fixed",
                    f"{elem.id} must {'match the pattern' if kind == 'pattern' else 'be'} "
                    f"{want!r}, found a value of form {shape(item)}",
                    loc,
                )
        if elem.binding is not None and (elem.binding[0] == "required" or not self.errors_only):
            self._binding(elem, item, type_name, loc)
        if elem.targets is not None and isinstance(item, dict):
            self._reference(elem, item, loc)
        for inv in elem.invariants if self.invariants else ():
            # a known skeleton passed its existence-only errors (its warnings, when
            # asked, are checked again: see _record)
            if (
                inv.existence_only
                and self.values_only
                and (self.errors_only or inv.severity == "error")
            ) or (self.errors_only and inv.severity != "error"):
                continue
            if not isinstance(item, dict):
                continue
            try:
                ok = inv.holds(item, self.resource, self.memo)
            except Exception:  # fhirpathpy fails on odd input: not the record's fault
                continue
            if not ok:
                self._issue(
                    "validation.invariant",
                    f"constraint {inv.key} not met: {inv.human}",
                    loc,
                    "error" if inv.severity == "error" else "warning",
                )
                if inv.existence_only:
                    self.structure_failed |= inv.severity == "error"

    def _slicing(self, elem: Elem, items: list[Any], type_name: str, loc: str, many: bool) -> None:
        if any(sl.match is None for sl in elem.slices):
            return  # a discriminator not evaluated here: no verdict rather than a false one
        counts = [0] * len(elem.slices)
        for n, item in enumerate(items):
            hit = next(
                (i for i, sl in enumerate(elem.slices) if _matches(item, sl.match, type_name)), None
            )
            where = f"{loc}[{n}]" if many else loc
            if hit is None:
                if elem.closed:
                    self._issue(
                        "validation.slicing",
                        f"{elem.id} is closed: this item matches none of its slices",
                        where,
                    )
                continue
            counts[hit] += 1
            sl = elem.slices[hit]
            known = self._verdict_key(sl.elem, item, type_name) if self.memo else None
            if known is not None and known in _SLICE_OK:
                continue
            sub = ProfileWalk(self.plans, self.resource, False, self.urls, self.errors_only)
            sub.invariants = False
            sub.memo = self.memo
            sub.item(sl.elem, item, type_name, where)
            self.issues += [i for i in sub.issues if i.code != "validation.invariant"]
            if known is not None and not sub.issues:
                if len(_SLICE_OK) >= _MAX_FROZEN:
                    _SLICE_OK.clear()
                _SLICE_OK.add(known)
        for sl, count in zip(elem.slices, counts, strict=True):
            if count < sl.elem.min or (sl.elem.max is not None and count > sl.elem.max):
                bound = "*" if sl.elem.max is None else str(sl.elem.max)
                self._issue(
                    "validation.slicing",
                    f"slice {sl.elem.id} has {count} item(s), the profile allows "
                    f"{sl.elem.min}..{bound}",
                    loc,
                )

    def _verdict_key(self, elem: Elem, item: Any, type_name: str) -> tuple[Any, ...] | None:
        """What a slice's walk of ``item`` (no invariants) can depend on, or None: the
        values of its elements with value checks (their JSON) and the shape of the rest
        (keys, kinds, list lengths: what cardinality reads). A record's identifier is new
        (its value), but not what its slice checks (type, system): one walk serves all.
        Not for an item with a reference (the check reads the Bundle's URLs) or a check
        of its own (a fixed value or binding reads all of it)."""
        if not isinstance(item, dict) or "resourceType" in item:
            return None
        if elem.fixed is not None or elem.binding is not None or elem.targets is not None:
            return None
        children = self.plans.children_of(elem, type_name)
        if not children:
            return None
        by_key = _index(self.plans, children, self.errors_only)[0]
        parts: list[Any] = []
        for key, value in item.items():
            hit = by_key.get(key)
            part = _content(value) if hit is not None and hit[2] else _shape(value)
            if part is None:
                return None
            parts.append((key, part))
        return (id(elem), type_name, self.errors_only, tuple(parts))

    def _binding(self, elem: Elem, item: Any, type_name: str, loc: str) -> None:
        assert elem.binding is not None
        strength, url = elem.binding
        if type_name == "code" and isinstance(item, str):
            known = self.plans.expansion(url)
            if known is not None and item in known.codes:
                return  # the common case, at once
            codings: list[tuple[str | None, Any, str]] = [(None, item, loc)]
        elif type_name == "Coding" and isinstance(item, dict):
            codings = [(item.get("system"), item.get("code"), loc)]
        elif type_name == "CodeableConcept" and isinstance(item, dict):
            codings = [
                (c.get("system"), c.get("code"), f"{loc}.coding[{n}]")
                for n, c in enumerate(item.get("coding") or [])
                if isinstance(c, dict)
            ]
        else:
            return  # Quantity, string, uri...: not checked against a ValueSet here
        codings = [c for c in codings if isinstance(c[1], str)]
        if not codings:
            return
        expansion = self.plans.expansion(url)
        if expansion is None:
            self._issue(
                "validation.binding",
                f"{elem.id}: ValueSet {url} cannot be expanded here; codes not checked",
                loc,
                "information",
            )
            return
        if any(expansion.has(system, code) for system, code, _ in codings):
            return
        self._bad_codes(elem, expansion, strength, url, codings)

    def _bad_codes(
        self,
        elem: Elem,
        expansion: Expansion,
        strength: str,
        url: str,
        codings: list[tuple[str | None, Any, str]],
    ) -> None:
        if strength == "required":
            system, _, where = codings[0]
            self._issue(
                "validation.binding",
                f"{elem.id}: no code is in the required ValueSet {url}"
                + (f" (system {system})" if system else ""),
                where,
            )
            return
        for system, _, where in codings:  # extensible: a code of the set's own systems
            if system is not None and system in expansion.by_system:
                self._issue(
                    "validation.binding",
                    f"{elem.id}: the code is not in the extensible ValueSet {url} "
                    f"although its system {system} is",
                    where,
                    "warning",
                )

    def _reference(self, elem: Elem, item: dict[str, Any], loc: str) -> None:
        assert elem.targets is not None
        allowed = elem.targets
        declared = item.get("type")
        if isinstance(declared, str) and declared not in allowed:
            self._issue(
                "validation.reference-type",
                f"{elem.id}: Reference.type {declared} is not one of {sorted(allowed)}",
                loc + ".type",
            )
        ref = item.get("reference")
        if not isinstance(ref, str):
            return
        target = self.urls.get(ref)
        # a scheme is case-insensitive (RFC 3986 §3.1): HTTPS://... is absolute too
        if target is None and not ref[:6].lower().startswith(("urn:", "#", "http:", "https:")):
            target = ref.split("?", 1)[0].split("/", 1)[0] if ("/" in ref or "?" in ref) else None
        if target is not None and target not in allowed:
            self._issue(
                "validation.reference-type",
                f"{elem.id}: the reference points at a {target}, not one of {sorted(allowed)}",
                loc + ".reference",
            )
