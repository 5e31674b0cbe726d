"""What a compiled spec depends on, and the memo of specs whose result is a function of
that alone.

The compiler fills a :class:`Scope` while it compiles a fragment or template. A spec
reading only relative paths depends on its node's text; one reading paths of its
segment group (``PRD-7`` inside ``group: PRD``) on those segments of the group; a
reference on the URLs it resolves to; and every spec on the variables it reads. A
path from the message root (``/MSH-7``) could depend on anything: such specs are
never memoised.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary, WeakSet

import orjson

from ..shared import freeze

if TYPE_CHECKING:
    from ..intake import MemoView
    from ._compile import Ctx

__all__ = ["MEMOS", "MEMO_SCOPES", "OWN_REFS", "OWN_SEGMENTS", "Scope", "memoised", "own_keys"]


@dataclass
class Scope:
    """Compile-time facts about the spec being compiled: what its result can depend on."""

    refs: set[str] = field(default_factory=set)  # literal resource keys referenced
    ref_vars: set[str] = field(default_factory=set)  # variables naming referenced keys
    vars: set[str] = field(default_factory=set)
    segments: set[str] = field(default_factory=set)  # segments of its group it reads
    rooted: bool = False  # reads from the message root: not memoisable

    def absorb(self, inner: Scope) -> None:
        self.refs |= inner.refs
        self.ref_vars |= inner.ref_vars
        self.vars |= inner.vars
        self.segments |= inner.segments
        self.rooted = self.rooted or inner.rooted

    def path(self, path: str) -> None:
        if path.startswith("/"):
            self.rooted = True
        elif not path.startswith("."):
            self.segments.add(path[:3])


# A record's own data: a spec that references the record's patient (a resource key), or
# reads the patient's segment, has keys that no other record meets (issue 18).
OWN_REFS = frozenset({"patient"})
OWN_SEGMENTS = frozenset({"PID"})


def own_keys(scope: Scope) -> bool:
    """Whether the keys of a spec with ``scope`` are a record's own (never met again)."""
    return bool(scope.refs & OWN_REFS or scope.segments & OWN_SEGMENTS)


# Both stores are bounded in bytes, not entries, and fill early: a 100,000-message
# batch must peak where a 10,000-message one does (issue 18).
# Remembered results per pure fragment: at most _MEMO_BYTES of their JSON and key text
# (a proxy for their size: results differ by orders of magnitude, an organisation's
# coding from a whole practitioner); the memo is cleared when full.
_MEMO_BYTES = 64 * 1024
_ENTRY_BYTES = 64  # counted per entry on top of its text: its key tuple and dict slot
# Keys met once, per pure fragment: their hashes in a fixed table of _SEEN_SLOTS slots
# (slot = hash's low bits; a newer key takes the slot), with the serial of the record
# that met them (BundleBuilder.serial), allocated whole when the mappings load (2 x 16
# KiB), so it never grows. A recurring key is remembered when another record meets it
# unless another key took its slot in between, which only delays it.
_SEEN_SLOTS = 2048  # a power of two
_SEEN_MASK = _SEEN_SLOTS - 1
# A memo whose keys do not recur (a template reading the patient's PID, an order's ORC)
# only costs: after _PROBE look-ups of which fewer than 1 in _RARE met a key again, it
# rests for _REST calls (no key, no look-up), then looks again. A look-up costs about
# what a small fragment (an identifier) costs to compute: one hit in 8 does not pay
# for the other seven (an order's placer number, met again by 1 record in 30).
_PROBE = 512
_RARE = 8
_REST = 8192
_MISS = object()
_HERE: Any = object()  # cached(ctx) without ``at``: at ctx.here

# The memo wrappers: generated code may call them as ``cached(ctx, node)``.
MEMOS: WeakSet[Callable[..., Any]] = WeakSet()
# What each memo wrapper's key is made of: the code generator calls a spec whose keys are
# a record's own (its patient's) without the wrapper (gateway/mapping/_codegen.py).
MEMO_SCOPES: WeakKeyDictionary[Callable[..., Any], Scope] = WeakKeyDictionary()


def memoised(fn: Callable[[Ctx], Any], scope: Scope) -> Callable[[Ctx], Any]:
    """Remember a spec's results by everything it can depend on (see Scope).

    Organisations, codings and practitioners recur in every message of a feed, so their
    resources and data types are built once. Results are shared between records, so
    they are frozen when remembered (gateway/shared.py): an in-place edit raises
    instead of reaching other records.

    A result is remembered when a second record meets its key, not the first: most keys
    of a feed never recur (the patient's identifiers, names, visit), and remembering
    them would mean a frozen copy of each, kept alive until the memo is cleared, for
    nothing (the garbage collector pays for every one). A key met only by this record
    (once, or twice: the patient's identifier in the Patient and in a reference) is the
    record's own value, shared with nobody.
    """
    if scope.rooted:
        return fn
    names = tuple(sorted(scope.vars | scope.ref_vars))
    # The variables' values, read the cheapest way for their number: one dict.get for
    # one, one C call (itemgetter) for several while all are set (a spec may read one
    # that is not: None, as .get gives it). map() and its unpacking cost more than the
    # rest of the key.
    name = names[0] if len(names) == 1 else None
    several = itemgetter(*names) if len(names) > 1 else None
    refs = tuple(sorted(scope.refs))
    ref_vars = tuple(sorted(scope.ref_vars))
    segments = frozenset(scope.segments)
    # Whether the key has more than the node and the variables: most memoised specs
    # (codings, identifiers, names) read their node alone: one test for the three.
    extended = bool(segments or refs or ref_vars)
    memo: dict[Any, Any] = {}
    seen = array("q", bytes(8 * _SEEN_SLOTS))  # hashes of keys met once (see _SEEN_SLOTS)
    seen_in = array("q", bytes(8 * _SEEN_SLOTS))  # the serial of the record that met each
    # Look-ups since the last probe, of which a key met before; calls left to rest; bytes
    # held by memo (closure variables: cheaper to count than a list's items).
    lookups = met = resting = held = 0
    # Once a variable was not set (a KeyError, costly to raise), read them one by one:
    # a spec that meets an unset variable meets it at most of its calls.
    sparse = False

    def cached(ctx: Ctx, at: Any = _HERE) -> Any:
        # ``at``: run at that node, as ``cached(ctx.at(at))`` would, without making that
        # context unless the spec runs (generated code passes it: a hit never needs it).
        nonlocal lookups, met, resting, held, sparse
        if resting:
            resting -= 1
            return fn(ctx if at is _HERE else ctx.at(at))
        # A memo hit would hide which fields the spec reads while tracing; views whose
        # nodes have no stable text (DICOM, XML) opt out with memo = False.
        # memo = True promises the MemoView members (an annotation, not a cast() call)
        view: MemoView = ctx.view  # type: ignore[assignment]
        if not view.memo or view.tracing:
            return fn(ctx if at is _HERE else ctx.at(at))
        lookups += 1
        if lookups >= _PROBE:
            if met * _RARE < lookups:  # keys that do not recur: rest
                resting = _REST
            lookups = met = 0
        here = ctx.here if at is _HERE else at
        group: tuple[str, ...] = ()  # the text of the segments read, in the group
        if extended and segments:
            in_group = view.group_key(here, segments)
            if in_group is None:  # the whole message: nothing to key on
                return fn(ctx if at is _HERE else ctx.at(at))
            group = in_group
        try:
            # The same text means the same thing only with the same delimiters and charset
            # (escapes such as \Xhh\ decode in the message's charset). ctx.at(here) has
            # ctx's variables, state and zone.
            if name is not None:
                key: tuple[Any, ...] = (
                    here.text,
                    here.level,
                    ctx.tz,
                    view.reading,
                    ctx.vars.get(name),
                )
            elif several is not None:
                if sparse:
                    values = tuple(map(ctx.vars.get, names))
                else:
                    try:
                        values = several(ctx.vars)
                    except KeyError:  # a variable not set: None, as ctx.vars.get gives it
                        values = tuple(map(ctx.vars.get, names))
                        sparse = True
                key = (here.text, here.level, ctx.tz, view.reading, *values)
            else:
                key = (here.text, here.level, ctx.tz, view.reading)
            if extended:
                key += group
                # every URL a ref/refs could return (refs(k)[0] is what ref(k) gives)
                if refs:
                    key += tuple([tuple(ctx.state.refs(k)) for k in refs])
                if ref_vars:
                    urls = [tuple(ctx.state.refs(str(ctx.vars.get(v) or ""))) for v in ref_vars]
                    key += tuple(urls)
            found = memo.get(key, _MISS)
            hashed = hash(key) if found is _MISS else 0
        except TypeError:
            # an unhashable variable value: compute, do not remember (only the key's
            # making is tried: a TypeError raised by fn is fn's own, not run twice)
            return fn(ctx if at is _HERE else ctx.at(at))
        if found is _MISS:
            # Keys met once are kept as their hashes (no object for the garbage
            # collector to walk); two keys with one hash only mean that the second
            # is remembered the first time it is met.
            slot = hashed & _SEEN_MASK
            serial = getattr(ctx.state, "serial", -1)  # -1: a state without (tests)
            if seen[slot] != hashed:
                seen[slot] = hashed
                seen_in[slot] = serial
                return fn(ctx if at is _HERE else ctx.at(at))  # the record's own value
            if serial == seen_in[slot] and serial >= 0:
                # Met again in the same record (the patient's identifier read for the
                # Patient and for a reference to it): still the record's own value,
                # which no other record meets; remembering it would only cost its
                # frozen copy and push recurring keys out of the memo. Not counted
                # as met: a fragment whose keys only recur this way rests.
                return fn(ctx if at is _HERE else ctx.at(at))
        met += 1  # a key met before
        if found is _MISS:
            warned = len(ctx.state.warnings)
            result = fn(ctx if at is _HERE else ctx.at(at))
            if len(ctx.state.warnings) > warned:
                return result  # a memo hit would not repeat the warning (a dropped value)
            found = freeze(result)
            size = _size(key, found)
            if held + size > _MEMO_BYTES:
                memo.clear()
                held = 0
            memo[key] = found
            held += size
        return found

    MEMOS.add(cached)
    MEMO_SCOPES[cached] = scope
    return cached


def _size(key: tuple[Any, ...], result: Any) -> int:
    """What a memo entry holds, in bytes of text: its key's strings and its result's
    JSON (computed once per remembered key: keys are remembered on their second use)."""
    text = sum([len(part) for part in key if type(part) is str])  # a list: no generator
    try:
        body = len(orjson.dumps(result))
    except TypeError:  # not JSON (no mapping makes one): count it as filling the memo
        body = _MEMO_BYTES
    return text + body + _ENTRY_BYTES
