"""The ``ceiling`` mapping target (issue 18): one generated function per message mapping.

Where the compiled target (gateway/mapping/_codegen.py) generates one function per unit
(a fragment, a template, a message's resources) called by :class:`MessageMapping.run`,
this one generates, for each message mapping named in :data:`TARGETS`, a single
``build(view, env, tz, lenient)``: the message's variables, every resource entry, the
Bundle's identifier and timestamp, and the Bundle itself, in one body. It either
returns exactly what the compiled engine's ``run`` would (the Bundle, the warnings) or
raises :class:`Fallback`, and then the whole message is mapped again by the compiled
engine (:meth:`MessageMapping.run`): a construct not lowered here, an error or a rare
case never gives other output, only the slower path. docs/notes: /work/notes/ceiling_design.md.

What it lowers beyond the compiled target (first slice):

- the message's shell: its variables, its ``one-patient`` check, its Bundle, inline;
- a field's repetitions (``each: PID-3``) whose body reads only components of the
  repetition: read from the segment's text, split once per repetition, without a view
  node (``Position``) made for each one nor an accessor called per component;
- a group's absolute reads (``OBR-27.6``, ``OBR-32.1.9``, and the message's own MSH
  fields at the root, ``/MSH-10``): its segment found once per group (a group of that
  very segment, an OBR's OBX, has it at its first line), the field split in place, no
  accessor called (a field holding a repetition, a subcomponent or an escape is read
  by ``cell``/``subcell``); a field's every repetition (``OBX-5(*)``) likewise;
- a template whose fields are not memoised (an order's) inline, not its unit called;
- ``at: ORC-2 | OBR-2`` whose body and ``with`` values read only components of the node
  (a record's own fragment): the field's first non-empty repetition read from its
  text, no node nor context made.

- the shared entries (an organisation at MSH-4, a practitioner and role at ORC-12, a
  referral's practitioner and role of ``group: PRD``, keyed on the PRD segment's text
  as the memo keys on it, ``view.group_key``): found whole (:class:`SharedEntries`:
  id, fullUrl, resource, request, by what their fields' memo keys on, the node's
  text read from the segment), appended without the fields' memo nor
  BundleBuilder.add; one id met again from other fields (a merge: a report's
  performing organisation that is also its sender) is merged as the add merges it
  (:func:`merge`), whether the entry was found whole or the add made it;
- a segment's groups (``group: ORC``, ``each: DG1``) found in place, labels inline;
- ``identifier-system``'s answers looked up in its table inline, ``script`` inline;
- a record's own entries (the patient, an order, a report and its findings, a
  diagnosis of ``each: DG1``): their id, request and place in the Bundle made inline,
  as BundleBuilder.add makes them; the add called for the rest (no identifier, an id
  made before: two DG1 of one code merged, other write rules);
- ``coding``'s answers (a code's codings, its translations) found by their arguments
  (:class:`Answers`, bounded in bytes), made again from their JSON: fresh values;
- the Bundle's scopes asked inline: a reference's URL (``ref``) and an ``id-of``'s id
  (a diagnosis's patient: no context made per DG1 to call it), a ``refs`` list and the
  URLs in a shared entry's key (:func:`_refs`), a required entry's count.

Not yet (the compiled target's code is generated there, or its functions called):
``at`` a component (``OBR-32.1``: the CNN interpreter's node is selected by its
accessor, then found whole), the context (``Ctx``) made per message and per group
though only the calls of the rare paths read it, other functions' answers, the
narratives (added after, by the pipeline, as today; a shared entry's text is not part
of what is found whole), the validation.

Every error path (a refused conversion, an unknown code, a required value missing)
raises :class:`Fallback`: the compiled engine then gives the error, or the lenient
field's warning, in its own words and order. It is the default engine
(``GATEWAY_MAPPING_ENGINE``); tests/mapping/test_codegen.py proves it byte for byte, and
test_ceiling_differential.py hunts for a difference on mutated messages.
"""

from __future__ import annotations

import logging
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from itertools import chain
from operator import methodcaller
from typing import Any

import orjson

from ..shared import FrozenDict
from ._bundle import (
    _IDENTITIES,
    _PLAIN_TOKEN,
    BundleBuilder,
    _choose,
    _merge,
    _merge_shared,
    fresh_resource_id,
    resource_id,
    search_escape,
    write_rules,
)
from ._codegen import Lowering, _Func, _maker, _read_var
from ._compile import _CONSTANTS, SAME_AS, SHAPES, Ctx, Fn
from ._functions import coding, identifier_system, script
from ._memo import MEMO_SCOPES, MEMOS
from ._terminology import _CJK

__all__ = ["STATS", "TARGETS", "Ceiling", "Fallback"]

log = logging.getLogger(__name__)

# The message mappings lowered whole (the others keep the compiled target): one at a
# time, each proven byte for byte before the next (REF.yaml: its constructs are ORDER's,
# plus the PRD groups' shared entries keyed on their segment, see Ceiling._shared;
# ORU.yaml: its OBR groups' 'where: any', 'first:'/'join:' variables over the OBXs and
# CNN interpreter at OBR-32.1 are generated by the constructs ORDER and REF use).
TARGETS = frozenset({"ORDER.yaml", "REF.yaml", "ORU.yaml"})

# Messages built by the ceiling target ("built") and those that fell back, by reason
# ("fallback:<reason>"): tests assert the fallback rate, benches report it. A handful
# of keys, counted for the life of the process.
STATS: Counter[str] = Counter()


class Fallback(Exception):  # not an error: the slower path is taken
    """The generated function does not build this message: the compiled engine does."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- what the generated code calls ------------------------------------------------------


def cells(view: Any, text: str, n: int) -> list[str | None]:
    """The first ``n`` components of the repetition ``text`` as the view reads them
    (``view.first('.C', node)`` for C of 1..n): cut at the first subcomponent,
    unescaped, stripped, None for an empty one or HL7's ``""`` (_view.components).
    A loop, not a comprehension: one call per repetition, not two."""
    ss, es = view._ss, view._es
    special = ss in text or es in text
    out: list[str | None] = []
    for raw in text.split(view._cs, n)[:n]:
        if special:
            if raw and ss in raw:
                raw = raw.split(ss, 1)[0]
            if raw and es in raw:
                raw = view.unescape(raw)
        value = raw.strip()
        out.append(value if value and value != '""' else None)
    if len(out) < n:
        out += [None] * (n - len(out))
    return out


def cell(view: Any, text: str, component: int) -> str | None:
    """``view.first('SEG-F.C', group)`` of the field's ``text`` holding a repetition, a
    subcomponent or an escape (the generated code reads the others inline)."""
    cut = text.find(view._rs)
    if cut >= 0:
        text = text[:cut]
    parts = text.split(view._cs)
    if component > len(parts):
        return None
    raw = parts[component - 1]
    if view._ss in raw:
        raw = raw.split(view._ss, 1)[0]
    if view._es in raw:
        raw = view.unescape(raw)
    value = raw.strip()
    return value if value and value != '""' else None


def subcell(view: Any, text: str, component: int, sub: int) -> str | None:
    """``view.first('.C.S', node)`` of the repetition ``text`` (_view.subcomponent_of)."""
    parts = text.split(view._cs)
    if component > len(parts) or not parts[component - 1]:
        return None
    subs = parts[component - 1].split(view._ss)
    if sub > len(subs):
        return None
    raw = subs[sub - 1]
    if not raw:
        return None
    if view._es in raw:
        raw = view.unescape(raw)
    value = raw.strip()
    return value if value and value != '""' else None


# -- shared entries, memoised whole ------------------------------------------------------

# Bytes of entries remembered per site (a template at one place of a mapping), as the
# memo counts them (_memo._MEMO_BYTES): their key text and JSON; cleared when full.
_SHARED_BYTES = 64 * 1024
_SHARED_ENTRY_BYTES = 64  # its key tuple, its value tuple and its dict slot


class SharedEntries(dict[tuple[Any, ...], tuple[Any, ...]]):
    """The finished entries of one shared-entry site (an organisation at MSH-4, a role at
    ORC-12): key (the node's text and level, the zone, the reading, the variables and the
    URLs of the references the fields read: what the fields' memo keys on) → (id,
    fullUrl, resource, request, fields). The generated code looks a key up itself (a
    dict's ``get``) and, found, appends a copy of the resource and request as
    BundleBuilder.add would, without the fields' memo, the add, its identity look-up."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    def remember(
        self, key: tuple[Any, ...], fields: Any, template: Any, state: BundleBuilder
    ) -> None:
        """Keep under ``key`` the entry BundleBuilder.add makes of ``fields`` (just given
        to it) when they are the fields' memoised (frozen) value: the memo remembers a
        key its second time, so a record's own practitioner is not kept, and the entries
        found hold the very frozen values the compiled engine's do (the narratives' and
        validator's caches know them by identity). Its identity is the one the add
        worked out (_bundle._IDENTITIES), whether it appended the entry or found it made
        already (an organisation sending to itself)."""
        if type(fields) is not FrozenDict:
            return
        known = _IDENTITIES.get(id(fields))
        if (
            known is None
            or known[0] is not fields
            or known[1] is not template
            or known[2] is not state.writes
        ):
            return  # no identity (a warning), or not kept
        rid, url, resource, request = known[3], known[4], known[5], known[6]
        if rid not in state._by_id:
            return  # pragma: no cover - the add made or found its id's entry
        # kept also when merged into an entry made from other fields of its id (a
        # report's performing organisation, the sender named by MSH-4): the generated
        # code merges it as the add does (:func:`merge`)
        # copies: the add's shared ones are only ever copied, and so are these
        value = (rid, url, dict(resource), dict(request), fields)
        size = (
            sum([len(part) for part in key if type(part) is str])
            + len(orjson.dumps(resource))
            + len(orjson.dumps(request))
            + _SHARED_ENTRY_BYTES
        )
        if self.held + size > _SHARED_BYTES:
            self.clear()
            self.held = 0
        self[key] = value
        self.held += size


def merge(state: BundleBuilder, existing: tuple[Any, ...], entry: tuple[Any, ...]) -> None:
    """What BundleBuilder.add does with the frozen fields of a found ``entry`` (id, fullUrl,
    resource, request, fields) whose id's entry ``existing`` (resource, fields made from,
    nothing merged since) was made from other fields: those fields merged into it."""
    rid, fields = entry[0], entry[4]
    resource, made_from = existing[0], existing[1]
    if existing[2] and type(made_from) is FrozenDict:
        _merge_shared(resource, made_from, fields, rid, state.writes)
    else:
        _merge(resource, fields)
    state._by_id[rid] = (resource, made_from, False)


# Bytes of a function's answers kept (the JSON of each, its key's text), per call site;
# cleared when full, as the memo is (_memo._MEMO_BYTES).
_ANSWER_BYTES = 64 * 1024


class Answers(dict[tuple[Any, ...], tuple[Any, str]]):
    """A pure function's answers at one call site (``coding``: a code's codings, the
    same for every record that sends it) by its arguments: (the Env, the answer's JSON).
    The generated code looks its arguments up (a dict's ``get``) and, found for the same
    Env, makes the answer again from its JSON (one C call: fresh lists and dicts, as the
    function makes them, that a record may edit) instead of calling the function and
    the half-dozen it calls (the terminology's tables, its translations)."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        super().__init__()
        self.held = 0

    def keep(self, key: tuple[Any, ...], env: Any, answer: Any) -> None:
        """Keep ``answer`` under ``key`` when its JSON gives it back equal (lists and
        dicts of strings: a tuple or another type would come back otherwise)."""
        try:
            # as text: orjson's bytes keep the capacity it wrote them in (kilobytes)
            data = orjson.dumps(answer).decode()
        except TypeError:
            return
        if orjson.loads(data) != answer:
            return  # pragma: no cover - coding's answers are JSON's own types
        size = sum([len(part) for part in key if type(part) is str]) + len(data) + 64
        if self.held + size > _ANSWER_BYTES:
            self.clear()
            self.held = 0
        self[key] = (env, data)
        self.held += size


# Functions whose answers are a function of their arguments and the Env alone (its
# tables and network, read only, as identifier_system's answers in Env.systems assume)
_PURE = frozenset({coding})

# identifier_system's arguments, in the order of its key in Env.systems
_SYSTEM_ARGS = ("kind", "authority", "authority_oid", "authority_type", "facility")
_NO: Any = object()  # not in Env.systems


# -- the generator ------------------------------------------------------------------------

# PID-3: a field of its group's first segment of that name, whole (not MSH-1/2, which
# the view reads as delimiters: MSH is left to the accessors)
_FIELD = re.compile(r"([A-Z][A-Z0-9]{2})-([1-9]\d*)\Z")
# ORC, /PID: the groups of a segment (each from one of its segments to the next)
_GROUP = re.compile(r"(/?)([A-Z][A-Z0-9]{2})\Z")
# OBX-5(*): every repetition of a field of the group's first segment of that name
_EVERY = re.compile(r"([A-Z][A-Z0-9]{2})-([1-9]\d*)\(\*\)\Z")
# for h12 in g10: a loop over a segment's groups
_FOR = re.compile(r"for (\w+) in (\w+):")
_RELATIVE = re.compile(r"\.([1-9]\d*)(?:\.([1-9]\d*))?\Z")
# OBR-27.6: a field (its first repetition) of the group's first segment of that name
_ABSOLUTE = re.compile(r"([A-Z][A-Z0-9]{2})-([1-9]\d*)(?:\.([1-9]\d*)(?:\.([1-9]\d*))?)?\Z")


class _RawFunc(_Func):
    """A generated function some of whose node variables hold a repetition's raw text
    (:attr:`raw`) rather than a view node: their components are read from the text."""

    def __init__(self, reader: Any, components: str | None) -> None:
        super().__init__(reader, components)
        self.raw: set[str] = set()
        # variable holding a segment's groups (:meth:`_groups`) → that segment; node
        # variable looping over them → the same: each group starts at its segment's line
        self.group_lists: dict[str, str] = {}
        self.group_of: dict[str, str] = {}

    def add(self, ind: int, text: str) -> None:
        if text.startswith("for "):
            m = _FOR.match(text)
            if m is not None and m[2] in self.group_lists:
                self.group_of[m[1]] = self.group_lists[m[2]]
        super().add(ind, text)

    def look(self, ind: int, method: str, path: str, h: str) -> str:
        if method == "select" and h not in self.raw:
            g = _GROUP.match(path)
            if g is not None and (not g[1] or h == "h0"):
                return self._groups(ind, path, h, g[2])
        if h not in self.raw:
            # /MSH-10 read at the root: the message's first MSH, as MSH-10 there
            m = _ABSOLUTE.match(path[1:] if h == "h0" and path[:1] == "/" else path)
            if (
                method != "first"
                or m is None
                or (m[1] == "MSH" and int(m[2]) <= 2)  # the delimiters: the view
                or (m[1] == "MSH" and h != "h0")  # another group's MSH: the view
            ):
                return super().look(ind, method, path, h)
            return self._field(ind, path, h, m[1], int(m[2]), int(m[3] or 1), int(m[4] or 1))
        m = _RELATIVE.match(path)
        assert method == "first" and m is not None, path  # Ceiling._raw_body checked it
        component, sub = int(m[1]), int(m[2] or 0)
        found = self._known.get((method, path, h))
        if found is not None and found[1] <= ind:
            return found[0]
        v = self.var("q")
        if sub <= 1:  # .C and .C.1 are the same value: one of the repetition's cells
            # its components as split (or, holding a subcomponent or escape, as cleaned
            # by ``cells``: stripping them again changes nothing), read without a call
            p = self._read(ind, h, component)
            i = component - 1
            self.add(ind, f"{v} = {p}[{i}] if len({p}) > {i} else None  # {path}")
            self.add(ind, f"if {v}:")
            self.add(ind + 1, f"{v} = {v}.strip() or None")
            self.add(ind + 1, f"if {v} == '\"\"':")
            self.add(ind + 2, f"{v} = None")
            self.add(ind, "else:")
            self.add(ind + 1, f"{v} = None")
        else:  # a subcomponent: split in place (its own copy of the repetition's text)
            x = self.var("x")
            self.add(ind, f"{v} = None  # {path}")
            self.add(ind, f"{x} = {h}")
            self._subfield(ind, v, x, component, sub)
        self._known[(method, path, h)] = (v, ind)
        return v

    def _field(
        self, ind: int, path: str, h: str, segment: str, field: int, component: int, sub: int = 1
    ) -> str:
        """A variable holding ``view.first(path, h)`` for ``SEG-F[.C[.S]]``, read without a
        call: the group's segment found once (:meth:`_segment`), the field's text split
        in place when it holds no repetition, subcomponent or escape (most), else read
        by ``cell`` (``subcell`` of its first repetition for a subcomponent)."""
        key = ("first", path, h)
        found = self._known.get(key)
        if found is not None and found[1] <= ind:
            return found[0]
        sv = self._segment(ind, segment, h)
        v, x = self.var("q"), self.var("x")
        self.add(ind, f"{v} = None  # {path}")
        self.add(ind, f"if {sv} is not None and len({sv}) > {field}:")
        self.add(ind + 1, f"{x} = {sv}[{field}]")
        self.add(ind + 1, f"if {x}:")
        if sub > 1:
            self._subfield(ind + 2, v, x, component, sub)
            self._known[key] = (v, ind)
            return v
        self.add(ind + 2, f"if rs in {x} or ss in {x} or es in {x}:")
        self.add(ind + 3, f"{v} = cell(view, {x}, {component})")
        self.add(ind + 2, "else:")
        if component == 1:
            self.add(ind + 3, f"{x} = {x}.partition(cs)[0].strip()")
        else:
            p = self.var("p")
            self.add(ind + 3, f"{p} = {x}.split(cs)")
            self.add(
                ind + 3, f"{x} = {p}[{component - 1}].strip() if len({p}) > {component - 1} else ''"
            )
        self.add(ind + 3, f"if {x} and {x} != '\"\"':")
        self.add(ind + 4, f"{v} = {x}")
        self._known[key] = (v, ind)
        return v

    def _subfield(self, ind: int, v: str, x: str, component: int, sub: int) -> None:
        """Code setting ``v`` to subcomponent ``sub`` (> 1) of component ``component`` of
        the field text ``x``'s first repetition, as the view's ``_parts`` and ``_value``
        read it: split in place when it holds no repetition nor escape."""
        p = self.var("p")
        self.add(ind, f"if rs in {x} or es in {x}:")
        self.add(ind + 1, f"{v} = subcell(view, {x}.partition(rs)[0], {component}, {sub})")
        self.add(ind, "else:")
        self.add(ind + 1, f"{p} = {x}.split(cs)")
        self.add(ind + 1, f"{x} = {p}[{component - 1}] if len({p}) > {component - 1} else ''")
        self.add(ind + 1, f"if {x}:")
        self.add(ind + 2, f"{p} = {x}.split(ss)")
        self.add(ind + 2, f"{x} = {p}[{sub - 1}].strip() if len({p}) > {sub - 1} else ''")
        self.add(ind + 2, f"if {x} and {x} != '\"\"':")
        self.add(ind + 3, f"{v} = {x}")

    def texts(self, ind: int, path: str, h: str) -> str | None:
        """A variable holding the ``texts`` accessor's list for ``SEG-F(*)`` (a field's
        every repetition: an OBX's report text), read in place as the accessor reads it
        (each non-empty repetition's first component and subcomponent, unescaped,
        cleaned); None when not lowered (the accessor then)."""
        m = _EVERY.match(path)
        if m is None or m[1] == "MSH" or h in self.raw:
            return None
        sv = self._segment(ind, m[1], h)
        field = int(m[2])
        out, x, r = self.var("x"), self.var("x"), self.var("r")
        self.add(ind, f"{out} = []  # {path}")
        self.add(ind, f"{x} = {sv}[{field}] if {sv} is not None and len({sv}) > {field} else ''")
        self.add(ind, f"if {x}:")
        self.add(ind + 1, f"for {r} in {x}.split(rs):")
        self.add(ind + 2, f"if not {r}:")
        self.add(ind + 3, "continue")
        self.add(ind + 2, f"if cs in {r}:")
        self.add(ind + 3, f"{r} = {r}.partition(cs)[0]")
        self.add(ind + 2, f"if ss in {r}:")
        self.add(ind + 3, f"{r} = {r}.partition(ss)[0]")
        self.add(ind + 2, f"if es in {r}:")
        self.add(ind + 3, f"{r} = view.unescape({r})")
        self.add(ind + 2, f"{r} = {r}.strip()")
        self.add(ind + 2, f"if {r} and {r} != '\"\"':")
        self.add(ind + 3, f"{out}.append({r})")
        return out

    def _groups(self, ind: int, path: str, h: str, segment: str) -> str:
        """A variable holding ``view.select(path, h)`` for a bare segment name (``group:
        ORC``, ``each: DG1``): the groups found in place, as Hl7View._groups does (from
        each ``segment`` to the next, the last to ``h``'s end), without the accessor,
        its method nor a call for each group's label (made as _segment_label makes it,
        and kept there for the reads that follow)."""
        key = ("select", path, h)
        found = self._known.get(key)
        if found is not None and found[1] <= ind:
            return found[0]
        v, pv, i, j, n, x, label = (self.var(p) for p in ("g", "f", "i", "j", "n", "x", "l"))
        self.add(ind, f"{v} = []  # {path}")
        self.add(ind, f"{pv} = view._positions.get({segment!r})")
        self.add(ind, f"if {pv}:")
        self.add(ind + 1, f"{i} = bisect_left({pv}, {h}.start)")
        self.add(ind + 1, f"{j} = bisect_left({pv}, {h}.end, {i})")
        self.add(ind + 1, f"for {n} in range({i}, {j}):")
        self.add(ind + 2, f"{x} = {pv}[{n}]")
        self.add(ind + 2, f"{label} = {segment!r} if len({pv}) == 1 else f'{segment}({{{n} + 1}})'")
        self.add(ind + 2, f"view._labels[{x}] = {label}")
        self.add(
            ind + 2,
            f"{v}.append(tnew(node, ({x}, {pv}[{n} + 1] if {n} + 1 < {j} else {h}.end, "
            f"{label}, None, 0)))",
        )
        self._known[key] = (v, ind)
        self.group_lists[v] = segment
        return v

    def _segment(self, ind: int, segment: str, h: str) -> str:
        """A variable holding the fields of ``h``'s group's first ``segment`` (or None),
        found here unless known: the accessor's bisect, once per group and segment; for
        a group of that very segment (``for h in`` its groups: an OBX of an OBR's
        results), its first line, no look-up (what the bisect would find)."""
        found = self._known.get(("segment", segment, h))
        if found is not None and found[1] <= ind:
            return found[0]
        if self.group_of.get(h) == segment:
            sv = self.var("S")
            self.add(ind, f"{sv} = view._segs[{h}.start]  # its group's own {segment}")
            self._known[("segment", segment, h)] = (sv, ind)
            return sv
        sv, pv, iv = self.var("S"), self.var("f"), self.var("i")
        self.add(ind, f"{sv} = None")
        self.add(ind, f"{pv} = view._positions.get({segment!r})")
        self.add(ind, f"if {pv}:")
        self.add(ind + 1, f"{iv} = bisect_left({pv}, {h}.start)")
        self.add(ind + 1, f"if {iv} < len({pv}) and {pv}[{iv}] < {h}.end:")
        self.add(ind + 2, f"{sv} = view._segs[{pv}[{iv}]]")
        self._known[("segment", segment, h)] = (sv, ind)
        return sv

    def finish(self) -> None:
        for p, (line, n, ind, h) in self._reads.items():
            if h in self.raw:
                read = f"cells(view, {h}, {n}) if ss in {h} or es in {h} else {h}.split(cs, {n})"
                self.lines[line] = "    " * ind + f"{p} = {read}"
            else:
                self.lines[line] = "    " * ind + f"{p} = {self.components}(view, {h}, {n})"


# Constructs a repetition's body may hold to be read from its text: values made of its
# components, constants, variables, functions, references (no node of its own needed).
_RAW_KINDS = frozenset(
    {"object", "list", "when", "first", "join", "plain", "path", "fn", "var", "ref", "refs"}
)
_RAW_CONDITIONS = frozenset({"present", "not", "all", "any", "equals", "in"})
# Indentation below which a repetition's body is generated (Lowering calls a spec deeper
# than _codegen._MAX_DEPTH with its context, which here would be the wrong node's)
_RAW_DEPTH = 20


def _remade(f: _Func, c: str) -> str | None:
    """Source making again the context ``c`` where only a rare path needs it (so that the
    line making it can be dropped, see _Func.unused): its own line's expression when
    this function made it (``ctx.at_with(node, {...})``), else ``c``; None when that
    line is gone (made unused already)."""
    line = f.made.get(c)
    if line is None:
        return c
    text = f.lines[line].strip()
    head = f"{c} = "
    return text[len(head) :] if text.startswith(head) else None


def _site(path: str, h: str) -> tuple[str, int] | None:
    """(segment, field) of ``at: ORC-12`` (a field of the group's segment) or of
    ``/MSH-4`` read at the message's root (MSH-1/2 are the delimiters: not here)."""
    m = _FIELD.match(path.removeprefix("/") if h == "h0" else path)
    if m is None or (m[1] == "MSH" and int(m[2]) <= 2):
        return None
    if m[1] == "MSH" and not path.startswith("/") and h != "h0":
        return None
    return m[1], int(m[2])


def _leaf_inline(leaf: Any) -> bool:
    """Whether Lowering._leaf generates ``leaf`` inline, with its error path apart (the
    value as it is, a conversion alone, or a look-up alone): a leaf called with the
    context would name the field from the context's node, not the repetition's."""
    shape = SHAPES.get(leaf)
    if shape == ("identity",):
        return True
    return shape is not None and shape[0] == "leaf" and (shape[1] is None or shape[2] is None)


def _refs(key: str) -> str:
    """An expression of the URLs listed under the key ``key`` (an expression) in the
    generated code's ``state``, as :meth:`BundleBuilder.refs` lists them (innermost
    scope first, each URL once, in order) but in C calls only: a dict of them."""
    return f"dict.fromkeys(_chain(map(_mc('get', {key}, ()), reversed(state._scopes))))"


class Ceiling(Lowering):
    """Generates the ``build`` function of one message mapping (see the module's doc)."""

    def __init__(self, view: Any) -> None:
        super().__init__(None, view)
        self.ns.update(
            {
                "Fallback": Fallback,
                "BundleBuilder": BundleBuilder,
                "Ctx": Ctx,
                "fresh_resource_id": fresh_resource_id,
                "cells": cells,
                "subcell": subcell,
                "cell": cell,
                "merge": merge,
                "_loads": orjson.loads,
                "_choose": _choose,
                "_PLAIN": _PLAIN_TOKEN.fullmatch,
                "search_escape": search_escape,
                "resource_id": resource_id,
                "bisect_left": bisect_left,
                "tnew": tuple.__new__,
                "_chain": chain.from_iterable,
                "_mc": methodcaller,
                "_NO": _NO,
                "_CJK": _CJK,
            }
        )

    def build(
        self,
        name: str,
        variables: dict[str, Fn],
        entries: Fn,
        identifier: Fn,
        timestamp: Fn,
        one_patient: str | None,
    ) -> Any:
        """The compiled ``build(view, env, tz, lenient) -> (bundle, warnings)`` of the
        message mapping ``name``, or None when the generated code does not compile."""
        source = self.build_source(name, variables, entries, identifier, timestamp, one_patient)
        try:
            exec(compile(source, f"<ceiling {name}>", "exec"), self.ns)
        except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
            log.warning("mapping %s: ceiling code refused (%s); compiled target used", name, exc)
            return None
        self.sources.append(source)
        return self.ns["build"]

    def build_source(
        self,
        name: str,
        variables: dict[str, Fn],
        entries: Fn,
        identifier: Fn,
        timestamp: Fn,
        one_patient: str | None,
    ) -> str:
        assert self.view is not None  # made for a view with accessors (MappingSet)
        f = _RawFunc(self._accessor, self._name(self.view.components, "CP"))
        f.add(0, f"def build(view, env, tz, lenient):  # {name}")
        # Accessors and raw reads know Hl7View's tables; a view with control characters
        # warns as it is read, and a traced one records its reads: the compiled engine.
        f.add(1, f"if view.__class__ is not {self._name(self.view, 'V')}:")
        f.add(2, "raise Fallback('view')")
        f.add(1, "if not view._plain or view.read is not None:")
        f.add(2, "raise Fallback('controls-or-trace')")
        f.add(1, "h0 = view.root")
        f.add(1, "node = h0.__class__  # the view's nodes (Position): groups are made here")
        f.add(1, "rs, cs, ss, es = view._rs, view._cs, view._ss, view._es")
        g = _GROUP.match(one_patient or "")
        if g is not None:  # '/PID': its groups are as many as its segments
            f.add(1, f"if len(view._positions.get({g[2]!r}) or ()) > 1:")
            f.add(2, "raise Fallback('several-patients')")
        elif one_patient is not None:
            f.add(1, f"if len({self._accessor('select', one_patient)}(view, h0)) > 1:")
            f.add(2, "raise Fallback('several-patients')")
        f.add(1, "state = BundleBuilder()")
        f.add(1, "ctx = Ctx(view, h0, {}, state, env, tz, '', lenient)")
        c = self._with(f, "ctx", "h0", 1, variables)
        self.emit(f, entries, f.var("v"), c, "h0", 1)
        ident = f.var("i")
        self.emit(f, identifier, ident, c, "h0", 1)
        f.add(1, f"if not {ident} or not {ident}.get('system') or not {ident}.get('value'):")
        f.add(2, "raise Fallback('no-identity')")
        # the record's own message id: never met again, not cached (as MessageMapping.run)
        rid = f"fresh_resource_id('Bundle', {ident}['system'], {ident}['value'])"
        f.add(
            1,
            "bundle = {'resourceType': 'Bundle', "
            f"'id': {rid}, 'identifier': {ident}, 'type': 'transaction'}}",
        )
        ts = f.var("t")
        self.emit(f, timestamp, ts, c, "h0", 1)
        f.add(1, f"if {ts}:")
        f.add(2, f"bundle['timestamp'] = {ts}")
        f.add(1, "bundle['entry'] = state.entries")
        f.add(1, "return bundle, state.warnings")
        f.finish()
        return "\n".join(f.lines) + "\n"

    # -- functions whose answers the generated code finds itself -------------------------
    def _fn(self, f: _Func, t: str, c: str, h: str, ind: int, func: Any, args: Any) -> None:
        """``identifier-system``: its answer looked up in ``env.systems`` (the function's
        own table of answers by argument) inline, the function called only for an
        argument set not there (worked out, kept, or raising, by the function itself);
        ``script``: its test inline. Either way one Python call less per identifier
        and per name; any other function is called."""
        names = [key for key, _ in args]
        if func is script and names == ["text"]:
            a = f.var("a")
            self.emit(f, args[0][1], a, c, h, ind)
            f.add(ind, f"{t} = ('IDE' if _CJK.search({a}) else 'ABC') if {a} else None")
            return
        if func in _PURE:
            self._answer(f, t, c, h, ind, func, args)
            return
        if func is not identifier_system or not set(names) <= set(_SYSTEM_ARGS):
            super()._fn(f, t, c, h, ind, func, args)
            return
        named = {}
        for key, fn in args:
            named[key] = f.var("a")
            self.emit(f, fn, named[key], c, h, ind)
        system = "(" + ", ".join(named.get(k, "None") for k in _SYSTEM_ARGS) + ",)"
        f.add(ind, f"{t} = env.systems.get({system}, _NO)")
        f.add(ind, f"if {t} is _NO:")
        call = ", ".join(f"{k}={v}" for k, v in named.items())
        f.add(ind + 1, f"{t} = {self._name(func, 'FN')}(env, {call})")

    def _answer(self, f: _Func, t: str, c: str, h: str, ind: int, func: Any, args: Any) -> None:
        """A pure function's answer found by its arguments (:class:`Answers`), the
        function called (and its answer kept) only for arguments not met before."""
        named = {}
        for key, fn in args:
            named[key] = f.var("a")
            self.emit(f, fn, named[key], c, h, ind)
        answers = self._name(Answers(), "AN")
        k, y = f.var("k"), f.var("y")
        f.add(ind, f"{k} = ({''.join(f'{v}, ' for v in named.values())})")
        f.add(ind, "try:")
        f.add(ind + 1, f"{y} = {answers}.get({k})")
        f.add(ind, "except TypeError:  # an unhashable argument: not kept")
        f.add(ind + 1, f"{k} = {y} = None")
        f.add(ind, f"if {y} is not None and {y}[0] is env:")
        f.add(ind + 1, f"{t} = _loads({y}[1])")
        f.add(ind, "else:")
        call = ", ".join(f"{key}={v}" for key, v in named.items())
        f.add(ind + 1, f"{t} = {self._name(func, 'FN')}(env, {call})")
        f.add(ind + 1, f"if {k} is not None:")
        f.add(ind + 2, f"{answers}.keep({k}, env, {t})")

    # -- the Bundle's scopes asked inline ----------------------------------------------
    def _ref_url(self, f: _Func, u: str, ind: int, key: str) -> None:
        """``u`` = the URL of the resource made under ``key``: the scopes walked inline
        as :meth:`BundleBuilder.ref` walks them (innermost first, the first URL of the
        first scope listing any), not a Python call per reference (~7 a message)."""
        s, urls = f.var("s"), f.var("l")
        f.add(ind, f"{u} = None")
        f.add(ind, f"for {s} in reversed(state._scopes):")
        f.add(ind + 1, f"{urls} = {s}.get({key!r})")
        f.add(ind + 1, f"if {urls}:")
        f.add(ind + 2, f"{u} = next(iter({urls}))")
        f.add(ind + 2, "break")

    def _refs(self, f: _Func, t: str, c: str, h: str, ind: int, key: str) -> None:
        """References to every resource made under ``key``, found inline (:func:`_refs`)."""
        f.add(ind, f"{t} = [{{'reference': u}} for u in {_refs(repr(key))}] or None")

    def _checked(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        """A required entry (the message's patient): the entries under its key counted
        in the innermost scope inline, as :meth:`BundleBuilder.count` counts them."""
        key, required, at, inner = shape
        before = f.var("n")
        count = f"len(state._scopes[-1].get({key!r}, ()))"
        f.add(ind, f"{before} = {count}")
        self.emit(f, inner, t, c, h, ind)
        f.add(ind, f"if {count} == {before}:")
        f.add(
            ind + 1,
            f"raise MappingError('required', {required!r}, location={self._value(at)})",
        )
        f.add(ind, f"{t} = None")

    def _every(self, f: _Func, t: str, c: str, h: str, ind: int, fn: Fn, *shape: Any) -> None:
        """A ``*`` path's values read in place (:meth:`_RawFunc.texts`): never None here,
        the view being plain and not traced (``build``'s first lines)."""
        alts, _, missing, sep = shape
        vs = f.texts(ind, alts[0], h) if isinstance(f, _RawFunc) else None
        if vs is None:
            super()._every(f, t, c, h, ind, fn, *shape)
            return
        f.add(ind, f"if {vs}:")
        f.add(ind + 1, f"{t} = {vs}" if sep is None else f"{t} = {sep!r}.join({vs})")
        f.add(ind, "else:")
        self._missing(f, t, c, ind + 1, missing, alts[0])

    # -- error paths: the compiled engine gives the error (or the lenient warning) ------
    def _at_error(self, f: _Func, c: str, ind: int) -> str:  # type: ignore[override]
        """Where the compiled target makes a context to name a field in an error (or to
        drop a lenient field's value with a warning): fall back. The lines that the
        compiled generator writes after it stay, unreachable, and name no context (None
        for it): a context used only there (an order group's, a note's) is not made."""
        f.add(ind, "raise Fallback('error-path')")
        return "None"

    # -- entries ------------------------------------------------------------------------
    def _add(self, f: _Func, t: str, c: str, h: str, ind: int, key: str, template: Any) -> None:
        """A template whose fields are not memoised (an order's: it reads the message
        root) is generated inline, where the compiled target calls its unit; a shared
        one (a role at ORC-12, made in a context with its ``with`` values) is looked up
        whole (:meth:`_shared`)."""
        fields = template.fields
        if (
            fields in MEMOS
            and self._own(fields) is None
            and self._shared(f, c, h, ind, key, template, _remade(f, c))
        ):
            f.add(ind, f"{t} = None")
            return
        own = self._own(fields) if fields in MEMOS else None  # the patient's
        inner = own if own is not None else SAME_AS.get(fields)
        if (fields in MEMOS and own is None) or inner is None or ind > _RAW_DEPTH:
            super()._add(f, t, c, h, ind, key, template)
            return
        v = f.var("v")
        self.emit(f, inner, v, c, h, ind)
        self._own_entry(f, ind, key, template, v, h)
        f.add(ind, f"{t} = None")

    def _own_entry(self, f: _Func, ind: int, key: str, template: Any, v: str, h: str) -> None:
        """Code adding a record's own entry (its patient, an order, a report: fields made
        here, never met again) as BundleBuilder.add does, inline for its common case:
        its id worked out from the chosen identifier (the template's element, type and
        preference known here), the entry appended, its URL listed under ``key``. Any
        other case (no identifier: an error or a warning; an id made before: a merge;
        fields not a plain dict; other write rules) is the add's."""
        rtype = template.resource_type
        writes = write_rules()
        mode = writes.mode(rtype)
        n, x, i, ch, rid, r, u, sc, done = (
            f.var(p) for p in ("n", "x", "i", "ch", "rid", "r", "u", "sc", "d")
        )
        f.add(ind, f"{n} = {v} or {{}}")
        f.add(ind, f"{ch} = None")
        f.add(ind, f"{x} = {n}.get({template.identity_element!r}) if type({n}) is dict else None")
        f.add(ind, f"if type({x}) is list and state.writes is {self._name(writes, 'WR')}:")
        if template.prefer:  # which identifier: the add's own choice
            f.add(ind + 1, f"{ch} = _choose({x}, {template.prefer!r})")
        else:  # the first usable one
            f.add(ind + 1, f"for {i} in {x}:")
            f.add(ind + 2, f"if {i}.get('system') and {i}.get('value'):")
            f.add(ind + 3, f"{ch} = ({i}['system'], {i}['value'])")
            f.add(ind + 3, "break")
        f.add(ind, f"{done} = False")
        f.add(ind, f"if {ch} is not None:")
        made = "resource_id" if template.recurs else "fresh_resource_id"
        f.add(ind + 1, f"{rid} = {made}({rtype!r}, {ch}[0], {ch}[1])")
        f.add(ind + 1, f"if {rid} not in state._by_id:")
        if mode == "update":  # a conditional update carries no id (_bundle._identity)
            f.add(ind + 2, f"{r} = {{'resourceType': {rtype!r}, **{n}}}")
        else:
            f.add(ind + 2, f"{r} = {{'resourceType': {rtype!r}, 'id': {rid}, **{n}}}")
        f.add(ind + 2, f"state._by_id[{rid}] = ({r}, {n}, True)")
        f.add(ind + 2, f"{u} = 'urn:uuid:' + {rid}")
        # the request as _bundle._request makes it: the query's parts escaped unless plain
        q = f.var("q")
        f.add(ind + 2, f"if _PLAIN({ch}[0] + {ch}[1]):")
        f.add(ind + 3, f"{q} = f'identifier={{{ch}[0]}}|{{{ch}[1]}}'")
        f.add(ind + 2, "else:")
        f.add(
            ind + 3,
            f"{q} = f'identifier={{search_escape({ch}[0])}}|{{search_escape({ch}[1])}}'",
        )
        if mode == "update":
            request = f"{{'method': 'PUT', 'url': f'{rtype}?{{{q}}}'}}"
        else:
            request = f"{{'method': 'POST', 'url': {rtype!r}, 'ifNoneExist': {q}}}"
        f.add(
            ind + 2,
            f"state.entries.append({{'fullUrl': {u}, 'resource': {r}, 'request': {request}}})",
        )
        f.add(ind + 2, f"{sc} = state._scopes[-1]")
        f.add(ind + 2, f"if {key!r} in {sc}:")
        f.add(ind + 3, f"{sc}[{key!r}][{u}] = None")
        f.add(ind + 2, "else:")
        f.add(ind + 3, f"{sc}[{key!r}] = {{{u}: None}}")
        f.add(ind + 2, f"{done} = True")
        f.add(ind, f"if not {done}:")
        f.add(ind + 1, f"state.add({key!r}, {self._name(template, 'R')}, {n}, {h})")

    def _direct(
        self, f: _Func, body: Fn, t: str, c: str, h: str, ind: int, sites: tuple[str, ...] = ()
    ) -> bool:
        """An entry of memoised fields taken at its node (an organisation at MSH-4, a
        practitioner at ORC-12) is looked up whole (:meth:`_shared`); a record's own
        entry taken at its node (a diagnosis of ``each: DG1``: its fields generated
        inline, as the compiled target makes them) is added inline (:meth:`_own_entry`)."""
        shape = SHAPES.get(body)
        if shape is not None and shape[0] == "add" and shape[2].fields in MEMOS:
            key, template = shape[1], shape[2]
            own = self._own(template.fields, sites)
            if own is None:
                c = _maker(f, c)
                if self._shared(f, c, h, ind, key, template, c):
                    f.add(ind, f"{t} = None")
                    return True
            elif ind <= _RAW_DEPTH:  # _own_entry nests three blocks deeper
                v = f.var("v")
                self._at_node(f, own, v, _maker(f, c), h, ind)
                self._own_entry(f, ind, key, template, v, h)
                f.add(ind, f"{t} = None")
                return True
        return super()._direct(f, body, t, c, h, ind, sites)

    def _shared(
        self,
        f: _Func,
        c: str,
        h: str,
        ind: int,
        key: str,
        template: Any,
        miss: str | None,
        node: Callable[[int], tuple[str, str]] | None = None,
    ) -> bool:
        """Code adding the entry of ``template``'s memoised fields at node ``h`` found whole
        in a :class:`SharedEntries` (no fields' memo, no BundleBuilder.add): keyed by
        what the fields' memo keys on, the id's entry appended (or, met before in this
        record, the same fields: nothing to merge), its URL listed under ``key``. Not
        found, the compiled target's code (the memo, the add) runs, and the entry it
        made is remembered (:meth:`SharedEntries.remember`). With ``node``, ``h`` holds
        the node's text, a field repetition's (level 0), and ``node(ind)`` writes the code
        finding the node itself, for that path alone (its variable, and the source of its
        context). ``miss``: the source of the
        context for that path (None: not lowered, False returned). An entry of the
        same id made from other fields is merged into it (:func:`merge`)."""
        scope = MEMO_SCOPES.get(template.fields)
        if scope is None or scope.rooted or miss is None:
            return False
        if scope.segments and node is not None:
            return False  # a field's text has no group: left to the memo
        names = sorted(scope.vars | scope.ref_vars)
        parts = [f"{h}.text", f"{h}.level"] if node is None else [h, "0"]
        g = None
        if scope.segments:
            # fields reading the segments of their group (a practitioner of PRD-2/3/5/7
            # in ``group: PRD``): keyed on those segments' text too, as the memo keys
            # (view.group_key); None for the whole message, which the memo never keeps
            g = f.var("g")
            self._group_key(f, ind, g, h, sorted(scope.segments))
            parts.append(f"*({g} or ())")
        parts += ["tz", "view.reading"]
        parts += [_read_var(f, c, name) for name in names]
        parts += [f"tuple({_refs(repr(ref))})" for ref in sorted(scope.refs)]
        parts += [
            f"tuple({_refs(f'str({_read_var(f, c, name)} or {chr(39) * 2})')})"
            for name in sorted(scope.ref_vars)
        ]
        memo = self._name(SharedEntries(), "SE")
        k, e, n, x, r, sc, u = (f.var(p) for p in ("k", "e", "n", "x", "r", "sc", "u"))
        f.add(ind, f"{k} = ({', '.join(parts)},)")
        f.add(ind, "try:")
        f.add(ind + 1, f"{e} = {memo}.get({k})")
        f.add(ind, "except TypeError:  # an unhashable variable: not remembered")
        f.add(ind + 1, f"{k} = {e} = None")
        if g is not None:
            f.add(ind, f"if {g} is None:")
            f.add(ind + 1, f"{k} = {e} = None")
        f.add(ind, f"if {e} is None:")
        if node is not None:
            h, miss = node(ind + 1)
        rt = self._name(template, "R")
        f.add(ind + 1, f"{n} = {self._name(template.fields, 'T')}({miss}, {h}) or {{}}")
        f.add(ind + 1, f"state.add({key!r}, {rt}, {n}, {h})")
        f.add(ind + 1, f"if {k} is not None:")
        f.add(ind + 2, f"{memo}.remember({k}, {n}, {rt}, state)")
        f.add(ind, "else:")
        f.add(ind + 1, f"{x} = state._by_id.get({e}[0])")
        f.add(ind + 1, f"if {x} is None:")
        f.add(ind + 2, f"{r} = {e}[2].copy()")
        f.add(ind + 2, f"state._by_id[{e}[0]] = ({r}, {e}[4], True)")
        f.add(
            ind + 2,
            f"state.entries.append({{'fullUrl': {e}[1], 'resource': {r}, "
            f"'request': {e}[3].copy()}})",
        )
        # the same fields met again (this record's practitioner in two orders): the
        # add merges nothing; other fields of the same id (a report's performing
        # organisation, also its sender) are merged as the add merges them
        f.add(ind + 1, f"elif {x}[1] is not {e}[4] and {x}[1] != {e}[4]:")
        f.add(ind + 2, f"merge(state, {x}, {e})")
        f.add(ind + 1, f"{sc} = state._scopes[-1]")
        f.add(ind + 1, f"{u} = {sc}.get({key!r})")
        f.add(ind + 1, f"if {u} is None:")
        f.add(ind + 2, f"{sc}[{key!r}] = {{{e}[1]: None}}")
        f.add(ind + 1, "else:")
        f.add(ind + 2, f"{u}[{e}[1]] = None")
        return True

    def _group_key(self, f: _Func, ind: int, g: str, h: str, segments: list[str]) -> None:
        """Code setting ``g`` to ``view.group_key(h, segments)``: for one segment name (a
        PRD group's practitioner reads PRD alone) its lines found inline, as the view's
        ``_in_range`` finds them (two bisects, no call; one line in the group of that
        segment, its own), else the view's method called."""
        found = f._known.get(("group-key", " ".join(segments), h))
        if found is not None and found[1] <= ind:  # the practitioner's, for its role
            f.add(ind, f"{g} = {found[0]}")
            return
        f._known[("group-key", " ".join(segments), h)] = (g, ind)
        if len(segments) > 1:
            sg = self._name(frozenset(segments), "SG")
            f.add(ind, f"{g} = view.group_key({h}, {sg})")
            return
        pv, i, j = f.var("f"), f.var("i"), f.var("j")
        f.add(ind, f"if {h}.start == 0 and {h}.end == view._nseg:  # the whole message")
        f.add(ind + 1, f"{g} = None")
        f.add(ind, "else:")
        f.add(ind + 1, f"{pv} = view._positions.get({segments[0]!r}) or ()")
        f.add(ind + 1, f"{i} = bisect_left({pv}, {h}.start)")
        f.add(ind + 1, f"{j} = bisect_left({pv}, {h}.end, {i})")
        f.add(ind + 1, f"if {j} == {i} + 1:")
        f.add(ind + 2, f"{g} = (view.message.lines[{pv}[{i}]],)")
        f.add(ind + 1, "else:")
        f.add(ind + 2, f"{g} = tuple([view.message.lines[x] for x in {pv}[{i}:{j}]])")

    # -- a field's repetitions read from its text -----------------------------------------
    def _each(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        selector, keep, body = shape
        m = _FIELD.match(selector)
        if (
            not isinstance(f, _RawFunc)
            or m is None
            or m[1] == "MSH"
            or keep is not None
            or h in f.raw
        ):
            super()._each(f, t, c, h, ind, *shape)
            return
        inner = self._raw_body(body, selector) if ind < _RAW_DEPTH else None
        if inner is None:
            super()._each(f, t, c, h, ind, *shape)
            return
        out, v, x, r = f.var("o"), f.var("v"), f.var("x"), f.var("r")
        f.add(ind, f"{out} = []")
        sv = f._segment(ind, m[1], h)
        f.add(ind, f"{x} = {sv}[{m[2]}] if {sv} is not None and len({sv}) > {m[2]} else ''")
        f.add(ind, f"if {x}:  # {selector}")
        # each non-empty repetition, as the view's field accessor selects them
        f.add(ind + 1, f"for {r} in {x}.split(rs):")
        f.add(ind + 2, f"if not {r}:")
        f.add(ind + 3, "continue")
        f.raw.add(r)
        self.emit(f, inner, v, c, r, ind + 2)
        self._extend(f, out, body, v, ind + 2)
        f.add(ind, f"{t} = {out} or None")

    def _at(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        """``at: ORC-2 | OBR-2`` (a field of the group's segment, its first non-empty
        repetition) whose body and ``with`` values read only components of it: read from
        the field's text, as :meth:`_each`, without the node, nor a context for it (the
        ``with`` values are the function's locals, see _codegen._read_var)."""
        at, extra, body = shape
        if at is None and extra:
            # ``with`` alone (an organisation named by a variable): the context made for
            # the values is dropped when only an entry's miss path uses it (it makes its
            # own, _remade): found whole, the entry needs none
            c2 = self._with(f, c, h, ind, extra)
            self.emit(f, body, t, c2, h, ind)
            f.unused(c2)
            return
        if isinstance(f, _RawFunc) and self._shared_at(f, t, c, h, ind, at, extra, body):
            return
        fields = [_FIELD.match(alt) for alt in at or ()]
        inner = None
        if (
            isinstance(f, _RawFunc)
            and fields
            and all(m is not None and m[1] != "MSH" for m in fields)
            and h not in f.raw
            and ind < _RAW_DEPTH
            and all(self._raw_ok(fn) for fn in extra.values())
        ):
            inner = self._raw_body(body, *at)
        if inner is None:
            super()._at(f, t, c, h, ind, *shape)
            return
        assert isinstance(f, _RawFunc)
        r, rr, x = f.var("r"), f.var("r"), f.var("x")
        # each alternative's segment found here, not inside the tests below: the reads
        # that follow in the group find it known
        svs = [f._segment(ind, m[1], h) for m in fields if m is not None]
        f.add(ind, f"{r} = None")
        level = ind
        for n, (m, sv) in enumerate(zip(fields, svs, strict=True)):
            assert m is not None
            if n:  # the next alternative when this one has no (non-empty) repetition
                f.add(level, f"if {r} is None:")
                level += 1
            f.add(level, f"{x} = {sv}[{m[2]}] if {sv} is not None and len({sv}) > {m[2]} else ''")
            f.add(level, f"if {x}:  # {at[n]}")
            f.add(level + 1, f"for {rr} in {x}.split(rs):")
            f.add(level + 2, f"if {rr}:")
            f.add(level + 3, f"{r} = {rr}")
            f.add(level + 3, "break")
        f.add(ind, f"if {r} is not None:")
        f.raw.add(r)
        c2 = c
        if extra:
            values = {}
            for key, fn in extra.items():
                v = f.var("w")
                self.emit(f, fn, v, c, r, ind + 1)
                values[key] = v
            # a context name never assigned: its variables are read from these locals,
            # and nothing a raw body generates uses the context itself (_raw_ok)
            c2 = f.var("c")
            f.scopes[c2] = (c, values)
        self.emit(f, inner, t, c2, r, ind + 1)
        f.add(ind, "else:")
        f.add(ind + 1, f"{t} = None")

    def _shared_at(
        self, f: _RawFunc, t: str, c: str, h: str, ind: int, at: Any, extra: Any, body: Fn
    ) -> bool:
        """``at: ORC-12 | OBR-16`` (or ``/MSH-4`` of the message) of a shared entry whose
        ``with`` values are constants (a role's keys): its key made of the field's first
        non-empty repetition read from the text (:meth:`_first_rep`), without the node
        (the accessor's call, its label); the node is selected only to make the entry
        (:meth:`_shared`). False when not lowered so."""
        shape = SHAPES.get(body)
        if (
            not at
            or ind >= _RAW_DEPTH
            or shape is None
            or shape[0] != "add"
            or shape[2].fields not in MEMOS
            or self._own(shape[2].fields, tuple(at)) is not None
            or not all(fn in _CONSTANTS for fn in extra.values())
        ):
            return False
        sites = [_site(alt, h) for alt in at]
        if not all(sites):
            return False
        r = self._first_rep(f, ind, tuple(at), sites, h)
        f.add(ind, f"if {r} is not None:")
        c2, values = c, {}
        if extra:
            for name, fn in extra.items():
                values[name] = f.var("w")
                self.emit(f, fn, values[name], c, r, ind + 1)
            c2 = f.var("c")  # never assigned: its variables are these locals
            f.scopes[c2] = (c, values)
        maker = _maker(f, c)
        literal = "{" + ", ".join(f"{k!r}: {v}" for k, v in values.items()) + "}"

        def node(level: int) -> tuple[str, str]:
            nodes, h2 = f.var("n"), f.var("h")
            f.add(level, f"{nodes} = {f.look(level, 'select', at[0], h)}")
            for alt in at[1:]:
                f.add(level, f"if not {nodes}:")
                f.add(level + 1, f"{nodes} = {f.look(level + 1, 'select', alt, h)}")
            f.add(level, f"{h2} = {nodes}[0]")
            return h2, (f"{maker}.at_with({h2}, {literal})" if values else maker)

        if not self._shared(f, c2, r, ind + 1, shape[1], shape[2], maker, node):
            f.lines[-1] += "  # not lowered"  # pragma: no cover - checked above
        f.add(ind + 1, f"{t} = None")
        f.add(ind, "else:")
        f.add(ind + 1, f"{t} = None")
        return True

    def _first_rep(
        self, f: _RawFunc, ind: int, at: tuple[str, ...], sites: list[Any], h: str
    ) -> str:
        """A variable holding the first non-empty repetition of the first of the fields
        ``at`` that has one (None if none has): what ``view.select(alt, h)[0].text`` gives,
        read from the segments' text (as :meth:`_at`); known for the reads that follow."""
        key = ("first-rep", " | ".join(at), h)
        found = f._known.get(key)
        if found is not None and found[1] <= ind:
            return found[0]
        r, rr, x = f.var("r"), f.var("r"), f.var("x")
        svs = [f._segment(ind, segment, h) for segment, _ in sites]
        f.add(ind, f"{r} = None")
        level = ind
        for n, ((_, field), sv) in enumerate(zip(sites, svs, strict=True)):
            if n:
                f.add(level, f"if {r} is None:")
                level += 1
            f.add(level, f"{x} = {sv}[{field}] if {sv} is not None and len({sv}) > {field} else ''")
            f.add(level, f"if {x}:  # {at[n]}")
            f.add(level + 1, f"for {rr} in {x}.split(rs):")
            f.add(level + 2, f"if {rr}:")
            f.add(level + 3, f"{r} = {rr}")
            f.add(level + 3, "break")
        f._known[key] = (r, ind)
        return r

    def _raw_body(self, body: Fn, *sites: str) -> Fn | None:
        """The spec to generate for ``body`` read from a repetition's text (``body``, or
        the closure of a record's own memoised fragment), or None when some construct
        in it needs a view node (another path than a component, a nested loop, a
        memoised value, a context of its own)."""
        # a fragment memoised at a record's own field (PID-3) is generated inline, as
        # the compiled target does it (Lowering._direct); any other memoised one is not
        own = self._own(body, sites) if body not in SHAPES else None
        spec = own if own is not None else body
        return spec if self._raw_ok(spec) else None

    def _raw_ok(self, fn: Any) -> bool:
        if fn in _CONSTANTS:
            return True
        shape = SHAPES.get(fn)
        if shape is None:
            own = self._own(fn)
            return own is not None and self._raw_ok(own)
        kind = shape[0]
        if kind not in _RAW_KINDS:
            return False
        if kind == "path" and not _leaf_inline(shape[2]):
            return False
        if kind == "plain":
            return _RELATIVE.match(shape[1]) is not None
        if kind == "path":
            return all(_RELATIVE.match(alt) for alt in shape[1]) and self._raw_ok_missing(shape[3])
        if kind == "object":
            return all(self._raw_ok(step[2]) for step in shape[1] if step[2] is not None)
        if kind in ("list", "first", "join"):
            return all(self._raw_ok(part) for part in shape[1])
        if kind == "when":
            return self._cond_ok(shape[1]) and self._raw_ok(shape[2])
        if kind == "fn":
            return all(self._raw_ok(arg) for _, arg in shape[2])
        if kind == "ref":
            return shape[2] is None or self._raw_ok(shape[2])
        return True  # var, refs: no node read

    @staticmethod
    def _raw_ok_missing(missing: Any) -> bool:
        # a default, None or a raise (the error path falls back): no node read
        shape = SHAPES.get(missing)
        return shape is not None

    def _cond_ok(self, cond: Any) -> bool:
        shape = SHAPES.get(cond)
        if shape is None or shape[0] not in _RAW_CONDITIONS:
            return False
        if shape[0] == "not":
            return self._cond_ok(shape[1])
        if shape[0] in ("all", "any"):
            return all(self._cond_ok(part) for part in shape[1])
        return self._raw_ok(shape[1])
