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

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from weakref import WeakSet

from ..shared import freeze

if TYPE_CHECKING:
    from ..intake import MemoView
    from ._compile import Ctx

__all__ = ["MEMOS", "Scope", "memoised"]


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


_MEMO_SIZE = 4096  # results kept per pure fragment; the memo is cleared when full
_SEEN_SIZE = 16384  # keys met once, per pure fragment; cleared when full
# A memo whose keys do not recur (a template reading the patient's PID, an order's ORC)
# only costs: after _PROBE look-ups of which fewer than 1 in _RARE met a key again, it
# rests for _REST calls (no key, no seen set), then looks again.
_PROBE = 512
_RARE = 50
_REST = 8192
_MISS = object()
_HERE: Any = object()  # cached(ctx) without ``at``: at ctx.here

# The memo wrappers: generated code may call them as ``cached(ctx, node)``.
MEMOS: WeakSet[Callable[..., Any]] = WeakSet()


def memoised(fn: Callable[[Ctx], Any], scope: Scope) -> Callable[[Ctx], Any]:
    """Remember a spec's results by everything it can depend on (see Scope).

    Organisations, codings and practitioners recur in every message of a feed, so their
    resources and data types are built once. Results are shared between records, so
    they are frozen when remembered (gateway/shared.py): an in-place edit raises
    instead of reaching other records.

    A result is remembered the second time its key is met, not the first: most keys of
    a feed never recur (the patient's identifiers, names, visit), and remembering them
    would mean a frozen copy of each, kept alive until the memo is cleared, for nothing
    (the garbage collector pays for every one). A key met once is the record's own
    value, shared with nobody.
    """
    if scope.rooted:
        return fn
    names = tuple(sorted(scope.vars | scope.ref_vars))
    refs = tuple(sorted(scope.refs))
    ref_vars = tuple(sorted(scope.ref_vars))
    segments = frozenset(scope.segments)
    memo: dict[Any, Any] = {}
    seen: set[int] = set()  # hashes of keys met once, not (yet) remembered
    # [look-ups, of which a key met before, calls left to rest]: see _PROBE
    stats = [0, 0, 0]

    def cached(ctx: Ctx, at: Any = _HERE) -> Any:
        # ``at``: run at that node, as ``cached(ctx.at(at))`` would, without making that
        # context unless the spec runs (generated code passes it: a hit never needs it).
        here = ctx.here if at is _HERE else at
        if stats[2]:  # resting
            stats[2] -= 1
            return fn(ctx if at is _HERE else ctx.at(at))
        # A memo hit would hide which fields the spec reads while tracing; views whose
        # nodes have no stable text (DICOM, XML) opt out with memo = False.
        # memo = True promises the MemoView members (an annotation, not a cast() call)
        view: MemoView = ctx.view  # type: ignore[assignment]
        if not view.memo or view.tracing:
            return fn(ctx if at is _HERE else ctx.at(at))
        stats[0] += 1
        if stats[0] >= _PROBE:
            if stats[1] * _RARE < stats[0]:  # keys that do not recur: rest, forget them
                stats[2] = _REST
                seen.clear()
            stats[0] = stats[1] = 0
        try:
            # The same text means the same thing only with the same delimiters and charset
            # (escapes such as \Xhh\ decode in the message's charset). ctx.at(here) has
            # ctx's variables, state and zone.
            if names:
                key: tuple[Any, ...] = (
                    here.text,
                    here.level,
                    ctx.tz,
                    view.reading,
                    *map(ctx.vars.get, names),
                )
            else:
                key = (here.text, here.level, ctx.tz, view.reading)
            if segments:
                lines = view.group_key(here, segments)
                if lines is None:
                    return fn(ctx if at is _HERE else ctx.at(at))
                key += lines
            if refs or ref_vars:
                state = ctx.state
                # every URL a ref/refs could return (refs(k)[0] is what ref(k) gives)
                key += tuple([tuple(state.refs(k)) for k in refs])
                key += tuple([tuple(state.refs(str(ctx.vars.get(v) or ""))) for v in ref_vars])
            found = memo.get(key, _MISS)
            if found is _MISS:
                # Keys met once are kept as their hashes (ints: small, nothing for the
                # garbage collector to walk); two keys with one hash only mean that the
                # second is remembered the first time it is met.
                hashed = hash(key)
                if hashed not in seen:
                    if len(seen) >= _SEEN_SIZE:
                        seen.clear()
                    seen.add(hashed)
                    return fn(ctx if at is _HERE else ctx.at(at))  # the record's own value
        except TypeError:  # an unhashable variable value: compute, do not remember
            return fn(ctx if at is _HERE else ctx.at(at))
        stats[1] += 1  # a key met before
        if found is _MISS:
            warned = len(ctx.state.warnings)
            result = fn(ctx if at is _HERE else ctx.at(at))
            if len(ctx.state.warnings) > warned:
                return result  # a memo hit would not repeat the warning (a dropped value)
            found = freeze(result)
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[key] = found
        return found

    MEMOS.add(cached)
    return cached
