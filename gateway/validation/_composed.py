"""Validation by construction per Bundle: one split (entry by entry), one verdict look-up.

``_construct`` answers each resource of a Bundle from its shape, at ~25 µs of Python per
resource (a dump, a split, the look-ups). Here the Bundle is taken whole: its compact
JSON is split (``_construct.split``; entry by entry, an entry met before byte for byte
taking its split from ``Splits``: ``split_entries``), and its *shape* — which holds the entry order
and every resource's shape — keys a **composed plan**, learnt the first time that Bundle
shape is met from the per-resource analyses the slow path has just made (the shell's and
each entry resource's ``Shape``). A resource's JSON is a substring of the Bundle's, so its
leaves are a contiguous run of the Bundle's leaves (the shell's: what is left); the plan
maps every analysed place (bound, free, reference leaves; residual invariants' nodes)
into the Bundle's leaves and nodes.

A Bundle of a known shape then costs: the free leaves checked per validator over the
whole Bundle (``Shapes.free_ok``: steady values by set superset, varying ones by one list
validator per type), every bound leaf (joined in one bytes), what the keyed references resolve to,
the outcomes of the residual invariants the key does not settle (``_settled``; a needle
looked for in the leaves they may read: ``_haystacks``), and one
look-up of the whole Bundle's issue list. The verdict is a function of that key for the
reasons each resource's is (``_construct``), joined by what ``check_bundle`` adds:
bdl-3/bdl-4 read the Bundle's ``type`` (in the key) and which entries hold a request or
response (the shape); bdl-7 and reference integrity read which fullUrls are equal and
which references name one, so the plan answers only a Bundle whose fullUrls are distinct
and whose references each name an entry's fullUrl or are conditional (the others, and a
verdict not met before, take the per-resource path, the reference for this one).
Which profile plan each part is held to (``plan_for``: its ``resourceType`` and
``meta.profile`` values, string leaves the Bundle shape does not hold) fixes which leaves
are free, bound or read by a residual invariant, so those leaves (``choosers``) are part
of the plan's own key: a part declaring another profile is another plan.
docs/validation.md says more; tests/validation/test_composed.py holds it to the
reference walk.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import orjson

from ..errors import Issue
from ._construct import (
    OPTIONS,
    Places,
    Shape,
    _by_adapter,
    _getter,
    _Once,
    outcome,
    split,
    split_leaves,
    target,
    text,
)
from ._invariants import Invariant, _conditional, _reaches, _uuid_urls

__all__ = [
    "Bundles",
    "Component",
    "Plan",
    "choosers",
    "compose",
    "leaf_paths",
    "outcomes",
    "resolved",
    "split_entries",
]

MAX_BYTES = 4 << 20  # plans and Bundle verdicts of one validator (a plan: tens of KB)

Path = tuple[str | int, ...]
# (invariant, the path of the resource it is evaluated in, its node's path from there)
Placed = tuple[Invariant, Path, Path]


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a Bundle as the per-resource path validates it: the shell (``root``
    ``()``) or an entry's resource (``("entry", n, "resource")``), with its shape."""

    root: Path
    shape: Shape
    places: Places


@dataclass(slots=True, eq=False)
class Plan:
    """A Bundle shape's composed plan, and the Bundle verdicts met under it."""

    shape: Shape  # over the Bundle's leaves: bound (with the Bundle's type), free
    full: Any  # leaves → every entry's fullUrl (bdl-7 and reference integrity)
    urls: Any  # leaves → the fullUrls of the entries holding a resource
    types: Any  # leaves → those resources' types, in the same order
    refs: Any  # leaves → every Reference.reference leaf
    keyed: Any  # leaves → the references keyed by what they resolve to
    residual: tuple[Placed, ...]
    # needle → leaves → every leaf a residual invariant of that needle may read (None:
    # the Bundle's JSON is searched, see _haystacks)
    needles: dict[bytes, Any]
    size: int  # bytes it holds, roughly (Bundles bounds the plans and verdicts in bytes)
    verdicts: dict[Any, tuple[Issue, ...]] = field(default_factory=dict)
    # per residual invariant, its last outcome by the leaves it may read (None: run
    # every time; see _Last)
    last: list[_Last | None] = field(default_factory=list)
    # the residual invariants by needle (needle, the indexes of those holding it), and
    # those without one: see outcomes
    groups: tuple[tuple[bytes, tuple[int, ...]], ...] = ()
    plain: tuple[int, ...] = ()
    leafwise: tuple[Callable[[list[bytes]], bool], ...] = ()  # (see _leafwise)


def leaf_paths(node: Any, path: Path, out: list[Path]) -> None:
    """The path of every string value under ``node``, in the order of its JSON (orjson
    writes a dict's keys in their order): the paths of the split's leaves."""
    if isinstance(node, str):
        out.append(path)
    elif isinstance(node, dict):
        for key, value in node.items():
            leaf_paths(value, (*path, key), out)
    elif isinstance(node, list):
        for n, item in enumerate(node):
            leaf_paths(item, (*path, n), out)


def choosers(bundle: dict[str, Any], count: int) -> Any:
    """A getter of the leaves that choose each part's profile plan (``plan_for``): the
    ``resourceType`` and ``meta.profile`` values of the Bundle and of each entry's
    resource. A plan is composed from the analyses under the plans they chose; the same
    Bundle shape with another profile declared (or another type) checks other leaves and
    other invariants, so its plan is another one. ``count``: the split's leaves (a walk
    that disagrees with the split chooses nothing: no plan is composed for it anyway)."""
    paths: list[Path] = []
    leaf_paths(bundle, (), paths)
    if len(paths) != count:
        return _getter([])
    return _getter([n for n, path in enumerate(paths) if _chooses(path)])


def _chooses(path: Path) -> bool:
    inside = len(path) > 3 and path[0] == "entry" and path[2] == "resource"
    tail = path[3:] if inside else path
    return tail == ("resourceType",) or (len(tail) == 3 and tail[:2] == ("meta", "profile"))


def _value(node: Any, path: Path) -> Any:
    for step in path:
        node = node[step]
    return node


def compose(
    bundle: dict[str, Any], shape: Any, leaves: list[bytes], parts: Sequence[Component]
) -> Plan | None:
    """The plan of ``bundle``'s shape (``shape``, ``leaves``: its split) from its
    components' shapes (the shell first, then each entry's resource); None when the
    leaves cannot be placed (the split and the walk disagree, a component's leaves are
    not where its shape says)."""
    paths: list[Path] = []
    leaf_paths(bundle, (), paths)
    if len(paths) != len(leaves) or any(
        text(raw) != _value(bundle, path) for raw, path in zip(leaves, paths, strict=True)
    ):
        return None
    inside = {part.root for part in parts if part.root}
    spans: dict[Path, list[int]] = {root: [] for root in inside}
    shell: list[int] = []
    for n, path in enumerate(paths):
        run = spans.get(path[:3])
        (run if run is not None else shell).append(n)
    bound: list[int] = []
    free: list[tuple[int, Any, int]] = []
    refs: list[int] = []
    keyed: list[int] = []
    residual: list[Placed] = []
    for part in parts:
        at = spans[part.root] if part.root else shell
        places = part.places
        if len(at) != places.count:
            return None
        bound += [at[n] for n in places.bound]
        free += [(at[n], adapter, ident) for n, adapter, ident in places.free]
        refs += [at[n] for n in places.refs]
        keyed += [at[places.refs[k]] for k in part.shape.keyed_refs]
        residual += [(inv, part.root, path) for inv, path in part.shape.residual]
    known = set(bound)
    residual = [r for r in residual if not _settled(r[0], (*r[1], *r[2]), paths, known)]
    index = {path: n for n, path in enumerate(paths)}
    kind = index.get(("type",))
    if kind is None:
        return None  # a Bundle without a string type: the per-resource path
    full, urls, types = _entries(bundle, index)
    leafwise: dict[int, Callable[[list[bytes]], bool]] = {}
    for n, (inv, root, path) in enumerate(residual):
        test = _leafwise(inv, (*root, *path), bundle, index)
        if test is not None:
            leafwise[n] = test
    last = [
        None if n in leafwise else _last(inv, (*root, *path), paths)
        for n, (inv, root, path) in enumerate(residual)
    ]
    memos = sum(memo is not None for memo in last)
    return Plan(
        shape=Shape(
            bound=_getter([*bound, kind]),
            free=_by_adapter(free),
            refs=None,
            keyed_refs=(),
            residual=(),
            first=(leaves, free),
            keep=_STEADY_BYTES,
        ),
        full=_getter(full),
        urls=_getter(urls),
        types=_getter(types),
        refs=_getter(refs),
        keyed=_getter(keyed),
        residual=tuple(residual),
        needles=_haystacks(residual, shape, paths),
        size=len(leaves) * _LEAF + len(residual) * _RESIDUAL + memos * _LAST_BYTES + _PLAN_BYTES,
        last=last,
        groups=_by_needle(residual),
        plain=tuple(
            n for n, (inv, _, _) in enumerate(residual) if inv.needle is None and n not in leafwise
        ),
        leafwise=tuple(leafwise.values()),
    )


def _leafwise(
    inv: Invariant, node: Path, bundle: dict[str, Any], index: dict[Path, int]
) -> Callable[[list[bytes]], bool] | None:
    """The outcome of a residual invariant as a test of the leaves, for the one run on
    every Bundle that reads values new in each (gw-bun-1: every entry's fullUrl a
    ``urn:uuid:``; its memo never served, and its walk of the entries cost ~20 calls);
    None for the others. A string starts with ``urn:uuid:`` exactly when its leaf does
    (none of those bytes is escaped, and no escape ends in one), and a leaf holds no NUL
    (orjson escapes it), so NUL + each leaf joined holds NUL + ``urn:uuid:`` once per
    leaf that starts so. Which entries have a string fullUrl is the shape's."""
    entries = bundle.get("entry")
    if node != () or not isinstance(entries, list):
        return None
    if not all(isinstance(entry, dict) for entry in entries):
        return None  # (no plan is composed for it: _models._Entries)
    if inv.native is _conditional:
        return _conditional_test(entries, index)
    if inv.native is not _uuid_urls:
        return None
    at = [index.get(("entry", n, "fullUrl")) for n in range(len(entries))]
    if None in at:
        return _never  # an entry without a string fullUrl (the native's False)
    getter, count = _getter([n for n in at if n is not None]), len(at)

    def test(leaves: list[bytes]) -> bool:
        return (b"\x00" + b"\x00".join(getter(leaves))).count(_UUID_LEAF) == count

    return test


_UUID_LEAF = b"\x00urn:uuid:"


def _conditional_test(
    entries: list[dict[str, Any]], index: dict[Path, int]
) -> Callable[[list[bytes]], bool]:
    """gw-bun-2 (every entry a Provenance, a POST with an ifNoneExist or a PUT to a URL
    holding ``?identifier=``: ``_invariants._conditional``) as a test of the leaves:
    per entry, its resourceType, request.method and request.url leaves (None: not a
    string, which the native's comparisons fail) and whether its request holds an
    ifNoneExist (a request, an ifNoneExist are the shape's; a leaf equals a plain ASCII
    string, or holds one, exactly when its string does). Its URLs are new in each Bundle
    (a PUT's identifier), so its memo never served and its walk ran on every Bundle."""
    rules = []
    for n, entry in enumerate(entries):
        request = entry.get("request")
        creates = isinstance(request, dict) and request.get("ifNoneExist") is not None
        at = [index.get(("entry", n, *path)) for path in _CONDITIONAL_LEAVES]
        rules.append((at[0], at[1] if isinstance(request, dict) else None, creates, at[2]))

    def test(leaves: list[bytes]) -> bool:
        for kind, method, creates, url in rules:
            if kind is not None and leaves[kind] == b"Provenance":
                continue
            if method is None:
                return False
            verb = leaves[method]
            if verb == b"POST" and creates:
                continue
            if verb != b"PUT" or url is None or b"?identifier=" not in leaves[url]:
                return False
        return True

    return test


_CONDITIONAL_LEAVES = (("resource", "resourceType"), ("request", "method"), ("request", "url"))


def _never(leaves: list[bytes]) -> bool:
    return False


def _by_needle(residual: list[Placed]) -> tuple[tuple[bytes, tuple[int, ...]], ...]:
    """The residual invariants holding a needle, by needle, in the order first met."""
    groups: dict[bytes, list[int]] = {}
    for n, (inv, _, _) in enumerate(residual):
        if inv.needle is not None:
            groups.setdefault(inv.needle, []).append(n)
    return tuple((needle, tuple(members)) for needle, members in groups.items())


def _settled(inv: Invariant, node: Path, paths: list[Path], bound: set[int]) -> bool:
    """Whether the invariant's outcome on ``node`` is a function of the plan's key: it
    reads no further than its node's projection on the names it holds (the premise of
    Invariant.holds' memo), and each leaf there whose value it may read is bound (the
    others' presence is the shape's)."""
    values = _value_names(inv.expression) if inv.names is not None else None
    if values is None or inv.names is None:
        return False
    depth = len(node)
    for n, path in enumerate(paths):
        if path[:depth] != node or n in bound:
            continue
        keys = [key for key in path[depth:] if isinstance(key, str)]
        if keys and all(_reaches(key, inv.names) for key in keys) and _reaches(keys[-1], values):
            return False  # a free value the expression may read
    return True


class _Last:
    """The last outcome of one residual invariant of a plan, keyed by the leaves it may
    read (``_reads``). Its outcome is a function of those leaves and of the shape (the
    premise of ``_settled``, which settles the invariants whose leaves are all bound);
    most read codes, systems and types that recur in every Bundle, though not bound by
    the profile (con-5, gw-ord-2, gw-dr-*), so their evaluation runs only when one of
    those values changes. One whose leaves are new in most Bundles (gw-bun-1 reads the
    entry URLs) is dropped after a few tries: building its key would only add cost."""

    __slots__ = ("hits", "key", "outcome", "reads", "tries")

    def __init__(self, reads: Any) -> None:
        self.reads = reads  # leaves → the leaves the invariant may read
        self.key: Any = None  # those leaves the last time (None: none kept)
        self.outcome = True
        self.tries = self.hits = 0

    def keep(self, key: Any, outcome: bool) -> bool:
        """Remember an outcome; False when this memo no longer pays (drop it)."""
        self.tries += 1
        if self.tries >= _LAST_TRIES and self.hits * 4 < self.tries:
            return False
        if sum(map(len, key)) + _LEAF_OBJECT * len(key) <= _LAST_BYTES:
            self.key, self.outcome = key, outcome
        return True


_LAST_TRIES = 16  # a memo hit in fewer than one Bundle in four by then is dropped
_LAST_BYTES = 1_024  # the leaves one memo keeps, at most (Plan.size counts it)
_LEAF_OBJECT = 40  # a bytes object's header and its slot in the key's tuple


def _last(inv: Invariant, node: Path, paths: list[Path]) -> _Last | None:
    if inv.needle is not None:
        return None  # answered by its needle's absence nearly always (bdl-8): no memo
    reads = _reads(inv, node, paths)
    return None if reads is None else _Last(_getter(reads))


def _haystacks(residual: list[Placed], shape: Any, paths: list[Path]) -> dict[bytes, Any]:
    """For each needle of the residual invariants (_invariants.NEEDLES), a getter of the
    leaves those invariants may read (as _settled finds them); None when one of them may
    read past its node, or when the Bundle shape's own bytes (keys, numbers) hold it.

    The needle test then searches those few leaves, not the Bundle's JSON (bdl-8, on
    every entry, reads its fullUrl; a search of a Bundle's ~9 KB cost ~3 µs). A needle
    holds no quote, so each place it occurs in the JSON lies inside one string or in what
    lies between them; an invariant's outcome depends only on the values it may read and
    the shape (the premise of _settled), so a needle absent from those holds as surely
    as one absent from the JSON."""
    found: dict[bytes, list[int] | None] = {}
    for inv, root, path in residual:
        needle = inv.needle
        if needle is None or (needle in found and found[needle] is None):
            continue
        reads = _reads(inv, (*root, *path), paths)
        if reads is None or any(needle in part for part in shape):
            found[needle] = None
        else:
            found[needle] = [*(found.get(needle) or ()), *reads]
    return {needle: None if at is None else _getter(at) for needle, at in found.items()}


def _reads(inv: Invariant, node: Path, paths: list[Path]) -> list[int] | None:
    """The leaves under ``node`` whose value the invariant may read (see _settled); None
    when it may read past its node."""
    values = _value_names(inv.expression) if inv.names is not None else None
    if values is None or inv.names is None:
        return None
    depth = len(node)
    out = []
    for n, path in enumerate(paths):
        if path[:depth] != node:
            continue
        keys = [key for key in path[depth:] if isinstance(key, str)]
        if keys and all(_reaches(key, inv.names) for key in keys) and _reaches(keys[-1], values):
            out.append(n)
    return out


@cache
def _value_names(expression: str) -> frozenset[str] | None:
    """The names of the elements whose values ``expression`` may read: all but functions
    and those it only tests for presence (``name.exists()``, ``.empty()``, ``.count()``,
    ``.hasValue()``: which elements exist is the shape's); None when it may read past its
    node (``%resource``, ``$this``...)."""
    if "%" in expression or "$" in expression:
        return None
    text = re.sub(r"'[^']*'", "", expression)
    out = set()
    for found in re.finditer(r"[A-Za-z_]\w*", text):
        rest = text[found.end() :]
        if not rest.startswith("(") and not _PRESENCE.match(rest):
            out.add(found.group())
    return frozenset(out)


_PRESENCE = re.compile(r"\.(?:exists|empty|count|hasValue)\(\)")


def _entries(bundle: dict[str, Any], index: dict[Path, int]) -> tuple[list[int], ...]:
    """The leaves of every entry's fullUrl, of those of entries holding a resource, and
    of those resources' types (what ``_models._Entries`` reads)."""
    full, urls, types = [], [], []
    for n, entry in enumerate(bundle.get("entry") or ()):
        url = index.get(("entry", n, "fullUrl"))
        if url is None:
            continue
        full.append(url)
        rtype = index.get(("entry", n, "resource", "resourceType"))
        if isinstance(entry.get("resource"), dict) and rtype is not None:
            urls.append(url)
            types.append(rtype)
    return full, urls, types


def resolved(
    plan: Plan, leaves: list[bytes], decode: Any, outside: Callable[[str], object]
) -> tuple[Any, ...] | None:
    """What the keyed references resolve to (the type of the entry they name); None when
    two fullUrls are equal (bdl-7) or a reference names no entry and is not ``outside``
    (a conditional reference): their issues hold values, which no key can. A leaf stands
    for its string: JSON escapes a string one way, so equal leaves are equal strings."""
    full = plan.full(leaves)
    names = set(full)
    if len(names) != len(full):
        return None
    refs = plan.refs(leaves)
    if not names.issuperset(refs) and not all(ref in names or outside(decode(ref)) for ref in refs):
        return None
    urls = dict(zip(plan.urls(leaves), plan.types(leaves), strict=True))
    keyed = plan.keyed(leaves)
    found = tuple(map(urls.get, keyed))  # (most name an entry holding a resource)
    if None not in found:
        return found
    # one names an entry without a resource (no type): what the reference check makes of it
    return tuple(
        known if known is not None else target(decode(ref), {})
        for known, ref in zip(found, keyed, strict=True)
    )


def outcomes(plan: Plan, bundle: dict[str, Any], content: bytes | None, leaves: list[bytes]) -> Any:
    """The residual invariants' outcomes, each on its node, in its resource, as a key
    (``content``: the Bundle's JSON, None when it was split entry by entry: then dumped if
    a needle must be looked for in it; ``leaves`` its split's). The invariants holding a
    needle come first, by needle: ``True`` for all of them when the values they may read
    lack it (each holds on every node then: NEEDLES, _haystacks; bdl-8, on every entry,
    one search and one item for them all), else the tuple of their outcomes; then each
    other invariant's outcome. Each item's place is the plan's, and ``True`` is no tuple:
    equal keys are equal outcomes."""
    out: list[Any] = []
    for needle, members in plan.groups:
        at = plan.needles[needle]
        if at is None and content is None:  # (rare: an invariant reading past its node)
            content = orjson.dumps(bundle, option=OPTIONS)  # its parts were plain JSON
        if _lacks(needle, at, content or b"", leaves):
            out.append(True)
        else:
            out.append(tuple([_outcome(plan, n, bundle, leaves) for n in members]))
    last = plan.last
    residual = plan.residual
    for n in plan.plain:  # (_outcome inline: on every Bundle, a call each cost more)
        memo = last[n]
        if memo is not None:
            key = memo.reads(leaves)
            if key == memo.key:
                memo.hits += 1
                memo.tries += 1
                out.append(memo.outcome)
                continue
        inv, root, path = residual[n]
        resource = _value(bundle, root)
        holds = outcome(inv, _value(resource, path), resource)
        if memo is not None and not memo.keep(key, holds):
            last[n] = None
        out.append(holds)
    for test in plan.leafwise:
        out.append(test(leaves))
    return tuple(out)


def _outcome(plan: Plan, n: int, bundle: dict[str, Any], leaves: list[bytes]) -> bool:
    """The outcome of the plan's residual invariant ``n`` (its memo first: _Last)."""
    memo = plan.last[n]
    key = None
    if memo is not None:
        key = memo.reads(leaves)
        if key == memo.key:
            memo.hits += 1
            memo.tries += 1
            return memo.outcome
    inv, root, path = plan.residual[n]
    resource = _value(bundle, root)
    holds = outcome(inv, _value(resource, path), resource)
    if memo is not None and not memo.keep(key, holds):
        plan.last[n] = None
    return holds


def _lacks(needle: bytes, at: Any, content: bytes, leaves: list[bytes]) -> bool:
    if at is None:
        return needle not in content
    return needle not in b"\x00".join(at(leaves))  # (orjson escapes NUL: no false match)


_LEAF = 48  # a leaf's index in the getters and the key's share (ints, tuple slots)
_RESIDUAL = 120  # a placed invariant: the tuple and its two paths
_PLAN = 2_000  # the plan, its getters and shape
# the steady values its shape keeps (Shape.passed: a referral Bundle's ~150, ~4 KB)
_STEADY_BYTES = 8_192
_PLAN_BYTES = _PLAN + _STEADY_BYTES


class Bundles:
    """One validator's composed plans by Bundle shape, with their verdicts: bounded in
    bytes (emptied when full), a verdict kept only the second time its key is met (a key
    holding a value new in every message would never serve)."""

    def __init__(self) -> None:
        self.plans: dict[Any, Plan | None] = {}  # None: a shape no plan can answer
        self.tries: dict[Any, int] = {}  # shapes whose plan could not be made yet
        self.choosers: dict[Any, Any] = {}  # Bundle shape → its choosers' getter
        self.splits = Splits()  # the entries' splits by their JSON (split_entries)
        self.size = 0
        self.hits = 0  # Bundles answered by their plan (tests and benchmarks read it)
        self._once = _Once()

    def retry(self, key: Any) -> bool:
        """Whether to try again to make the plan of a shape that had none: at the 1st,
        2nd, 4th, 8th... Bundle of it (a component not learnt yet: the first Bundle held
        an invalid value, or the table of shapes was emptied)."""
        tries = self.tries.get(key, 0) + 1
        if tries == 1:
            self._room(_shape_size(key) + _TRY)
        self.tries[key] = tries
        return tries & (tries - 1) == 0

    def chooser(self, key: Any, bundle: dict[str, Any], count: int) -> Any:
        """The getter of the leaves choosing the parts' profile plans (``choosers``) of the
        Bundle shape ``key`` (its bytes, the profile asked for), made once per shape."""
        found = self.choosers.get(key)
        if found is None:
            found = choosers(bundle, count)
            self._room(_shape_size(key) + _TRY)
            self.choosers[key] = found
        return found

    def add(self, key: Any, plan: Plan | None) -> None:
        self._room(_shape_size(key) + (plan.size if plan is not None else 0) + _TRY)
        self.plans[key] = plan
        self.tries.pop(key, None)

    def remember(self, plan: Plan, key: Any, issues: list[Issue]) -> None:
        """Keep a Bundle's verdict the second time its key is met (``key``: the bound
        leaves joined, the references' targets, the residual outcomes)."""
        if not self._once.seen(key):
            return
        size = _VERDICT + len(key[0]) + _LEAF * (len(key[1]) + len(key[2]))
        self._room(size + _ISSUE * len(issues))
        plan.verdicts[key] = tuple(issues)

    def _room(self, size: int) -> None:
        """Count ``size`` more bytes, emptying the tables first when they would overflow."""
        if self.size + size > MAX_BYTES:
            self.plans.clear()
            self.tries.clear()
            self.choosers.clear()
            self.size = 0
        self.size += size


def _shape_size(key: Any) -> int:
    """The bytes of a plan's key: its Bundle shape (what lies between the strings, and the
    keys), a few KB."""
    return sum(len(part) for part in key[0])


_TRY = 200  # a shape's key (besides its bytes) and its count
_VERDICT = 300  # a verdict's key tuples and its dict slot
_ISSUE = 400  # an Issue kept in a verdict


# -- a Bundle's split, entry by entry -----------------------------------------------------

# What one entry's split gives: its shape (what lies between its strings, its keys), its
# leaves, and whether its JSON held an escape (its leaves then need _construct.text)
_Part = tuple[tuple[bytes, bytes], tuple[bytes, ...], bool]
MAX_SPLIT_BYTES = 2 << 20  # entries' splits by their JSON, per validator
_PART_ITEM = 300  # a part's tuples, its dict slot and the split's layout share
_BUCKET = 4  # entries of the same ends kept (a Practitioner whose narrative changed)
_EDGE = 96  # the bytes at each end of an entry's JSON that key its split
_DECODE = bytes.decode


class Splits:
    """The splits of the entries met before, by their JSON. Most entries of a feed's
    Bundle recur byte for byte from message to message (the sender and receiver
    Organizations, the staff, the Encounter of a referral: 6 of 9), so an entry met
    again costs its dump, one look-up and one comparison, not a split. A split is a
    function of the JSON alone, so what is kept here is never stale. It is kept the
    second time its JSON is met (a Patient, an order, never recurs), bounded in bytes and
    emptied when full.

    The table is keyed by the JSON's first and last bytes (an entry's fullUrl, its type
    and id; its request's url), and the JSON kept beside the split is compared whole: a
    hash of every entry's whole JSON (~10 KB a Bundle) cost more than a split saves."""

    def __init__(self) -> None:
        self.known: dict[bytes, list[tuple[bytes, _Part]]] = {}
        self.size = 0
        self._once = _Once()

    def part(self, content: bytes) -> _Part | None:
        """The split of one entry's JSON; None when it holds a ``null`` (see split)."""
        key = content[:_EDGE] + content[-_EDGE:]
        for known, found in self.known.get(key, ()):
            if known == content:
                return found
        part = split_leaves(content)
        if part is None:
            return None
        if self._once.seen(key):
            self._keep(key, content, part)
        return part

    def _keep(self, key: bytes, content: bytes, part: _Part) -> None:
        size = 2 * len(content) + len(key) + _LEAF * len(part[1]) + _PART_ITEM
        if self.size + size > MAX_SPLIT_BYTES:
            self.known.clear()
            self.size = 0
        bucket = self.known.setdefault(key, [])
        if len(bucket) >= _BUCKET:
            del bucket[0]  # (still counted: the table is emptied a little sooner)
        bucket.append((content, part))
        self.size += size


def split_entries(
    bundle: dict[str, Any], splits: Splits
) -> tuple[tuple[bytes, ...], list[bytes], Callable[[bytes], str]] | None:
    """What ``split`` gives for the Bundle's JSON, but made entry by entry: (a shape, the
    leaves, the function giving a leaf's string); None when the Bundle is not of the form
    this needs (its ``entry`` a list and its last key) or a part is not plain JSON data,
    or holds a ``null``.

    The leaves are the very leaves of the whole Bundle's split: the JSON of a Bundle
    whose last key is ``entry`` is its shell's JSON (``entry`` emptied) with each entry's
    JSON in the brackets, and no string spans two of them. The shape differs from the
    whole's (the shell's and each entry's, in order, as one flat tuple of bytes) and is
    as good a key: those parts' shapes fix the whole's, and it takes the shape of an
    entry met before from ``splits`` instead of a new split."""
    entries = bundle.get("entry")
    if type(entries) is not list or next(reversed(bundle)) != "entry":
        return None
    shell = dict(bundle)
    shell["entry"] = []
    try:
        made = split(orjson.dumps(shell, option=OPTIONS))
        if made is None:
            return None
        (between, keys), leaves, decode = made
        shape = [between, keys]
        escaped = decode is not _DECODE
        dumps = orjson.dumps
        for entry in entries:
            part = splits.part(dumps(entry, option=OPTIONS))
            if part is None:
                return None
            shape += part[0]  # (operators, not calls: this runs per entry)
            leaves += part[1]
            escaped = escaped or part[2]
    except TypeError:  # not plain JSON data (a datetime, a non-string key)
        return None
    return tuple(shape), leaves, text if escaped else _DECODE
