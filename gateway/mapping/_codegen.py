"""Compiled mappings: each unit of a mapping (a fragment's value, a template's fields, a
message's entries) as one generated Python function instead of a chain of closures.

The YAML is still compiled to closures first (gateway/mapping/_compile.py, the reference
implementation, which checks the files and works out what each spec depends on); every
closure records its construct in ``SHAPES``, and this module writes the Python those
closures would run: paths as direct ``view.first``/``view.select`` calls with their
text fixed at compile time, objects as dict literals and ``if`` tests, lists and
conditions inline, no call per node. A closure whose construct is not generated here
(references, memoised fragments, ``sep`` lists) is called from the generated code as it
is, so the output is the interpreter's by construction; tests/mapping/test_codegen.py
proves it byte for byte on every golden, example and generated message.

``GATEWAY_MAPPING_ENGINE=interpreted`` keeps the closures. The generated source and its
compiled code are cached on disk (:class:`CodeCache`); a cached unit is used only when
its source hash matches the freshly generated one, so a stale or corrupt entry is
regenerated, never trusted. docs/mapping-language.md, "Compiled mappings".
"""

from __future__ import annotations

import hashlib
import keyword
import logging
import marshal
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MappingError
from ._compile import _CONSTANTS, _DROPPED, _VARIES, SAME_AS, SHAPES, Ctx, Fn, _convert
from ._memo import MEMO_SCOPES, MEMOS, OWN_SEGMENTS, Scope, own_keys
from ._terminology import CodeTable
from ._types import CONVERTERS

__all__ = ["ENGINES", "GENERATOR_VERSION", "CodeCache", "Lowering", "engine_setting"]

log = logging.getLogger(__name__)

# Part of the cache key: bump it whenever the generated code changes for the same input.
GENERATOR_VERSION = "18"
# ceiling: the compiled target, with the message mappings of _ceiling.TARGETS generated
# whole (gateway/mapping/_ceiling.py); not the default until it proves faster
ENGINES = ("compiled", "interpreted", "ceiling")
_MAX_DEPTH = 40  # indentation levels in one function; deeper specs are called instead
_EMPTY = "({0} is None or {0} == '' or {0} == [] or {0} == {{}})"  # _compile._empty, falsy part
# A record's own data: a memoised spec that references the record's patient (a resource
# key), or reads the patient's segment (what it reads, or the node it is called at), has
# keys that no other record meets (issue 18: ~7 memo probes per Patient, none a hit). Its
# body is generated inline, without the memo's call, key and probe: the same value (a
# miss computes it), only not frozen, as the record's own values never are (_memo.own_keys).
# Fields that identify one order (placer and filler numbers) or one referral (RF1-6 its
# originating id, RF1-11 the external one): a spec called at one of them is the
# record's own as well (a referral's id recurs only in its cancellation, REF^I14).
_OWN_FIELDS = frozenset({"ORC-2", "ORC-3", "OBR-2", "OBR-3", "RF1-6", "RF1-11"})


def _own_site(path: str) -> bool:
    """Whether the node at ``path`` is the record's own (see _memo.OWN_SEGMENTS)."""
    path = path.lstrip("/")
    return path[:3] in OWN_SEGMENTS or path.split(".")[0] in _OWN_FIELDS


def engine_setting(env: dict[str, str] | None = None) -> str:
    """``GATEWAY_MAPPING_ENGINE``: ceiling (default: compiled, the HL7 v2 message
    mappings generated whole, _ceiling.py), compiled or interpreted (the closures)."""
    value = (env if env is not None else os.environ).get("GATEWAY_MAPPING_ENGINE") or "ceiling"
    if value not in ENGINES:
        raise ConfigError(
            "bad-setting",
            f"GATEWAY_MAPPING_ENGINE={value!r}: use one of {', '.join(ENGINES)}",
        )
    return value


def _not_empty(var: str) -> str:
    return f"({var} or not {_EMPTY.format(var)})"


def _literal(value: Any) -> str | None:
    """Python source for a plain scalar, or None when it must be passed by name."""
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    return None


class _Func:
    """The lines of one generated function, its fresh local names, and the view look-ups
    already made (each path read once per node: the view's answers are pure).

    ``reader(method, path)`` is the callee of a look-up: ``view.first`` called with the
    path, or an accessor bound for that path (``A3``) called with the view."""

    def __init__(
        self, reader: Callable[[str, str], str] | None = None, components: str | None = None
    ) -> None:
        self.reader = reader
        # the view's ``components(view, node, n)`` by its namespace name (one call reads
        # every component a fragment needs of its node), or None
        self.components = components
        # its calls: variable → [line, n, indentation, node]; n (the highest component
        # read through it) is known when the function is done (:meth:`finish`)
        self._reads: dict[str, list[Any]] = {}
        self.lines: list[str] = []
        self._n = 0
        # (method, path, node variable) → (variable holding the answer, its indentation)
        self._known: dict[tuple[str, str, str], tuple[str, int]] = {}
        # context variable → (the context it was made from, {var: variable holding its
        # value} for the vars it adds): a variable is read where it was set, and a
        # context made for a node (``ctx.at``) shares its maker's variables
        self.scopes: dict[str, tuple[str, dict[str, str]]] = {}
        # context variable made by ``ctx.at(node)`` → its line, dropped (a ``pass``) when
        # nothing generated after it uses that context (see :meth:`unused`)
        self.made: dict[str, int] = {}
        # context variable made by ``ctx.at(node)`` → (its maker, the node variable): an
        # error path makes its own (:meth:`Lowering._at_error`), not keeping the line
        self.nodes: dict[str, tuple[str, str]] = {}

    def make_at(self, ind: int, c2: str, c: str, h: str) -> None:
        """``c2 = c.at(h)``, a line dropped later if ``c2`` is never used."""
        self.made[c2] = len(self.lines)
        self.add(ind, f"{c2} = {c}.at({h})")
        self.scopes[c2] = (c, {})
        self.nodes[c2] = (c, h)

    def unused(self, c2: str) -> bool:
        """Whether ``c2``, made by :meth:`make_at`, is used by no line after its own; its
        line becomes ``pass`` (kept: it may be a block's only line)."""
        line = self.made.get(c2)
        if line is None:
            return False
        name = re.compile(rf"\b{c2}\b")
        if any(name.search(text) for text in self.lines[line + 1 :]):
            return False
        text = self.lines[line]
        self.lines[line] = text[: len(text) - len(text.lstrip())] + "pass"
        del self.made[c2]
        return True

    def var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def add(self, ind: int, text: str) -> None:
        # A line less indented than an answer's assignment is outside its block: the
        # answer may not have been computed on the way here.
        if self._known and any(level > ind for _, level in self._known.values()):
            self._known = {k: v for k, v in self._known.items() if v[1] <= ind}
        self.lines.append("    " * ind + text)

    def look(self, ind: int, method: str, path: str, h: str) -> str:
        """A variable holding ``view.<method>(path, h)``, assigned here unless known."""
        found = self._known.get((method, path, h))
        if found is not None and found[1] <= ind:
            return found[0]
        v = self.var("q")
        component = _component(path) if method == "first" else 0
        if self.reader is None:
            self.add(ind, f"{v} = view.{method}({path!r}, {h})")
        elif component and self.components is not None:
            # one of the node's components, all read at once (None: one by one)
            p = self._read(ind, h, component)
            call = f"{self.reader(method, path)}(view, {h})"
            self.add(ind, f"{v} = {p}[{component - 1}] if {p} is not None else {call}  # {path}")
        else:
            self.add(ind, f"{v} = {self.reader(method, path)}(view, {h})  # {path}")
        self._known[(method, path, h)] = (v, ind)
        return v

    def _read(self, ind: int, h: str, component: int) -> str:
        """The variable holding node ``h``'s components (up to ``component`` at least),
        read here unless a read that this line follows is known."""
        found = self._known.get(("components", "", h))
        if found is not None and found[1] <= ind:
            read = self._reads[found[0]]
            read[1] = max(read[1], component)
            return found[0]
        p = self.var("P")
        self._reads[p] = [len(self.lines), component, ind, h]
        self.add(ind, "")  # written by finish(), once n is known
        self._known[("components", "", h)] = (p, ind)
        return p

    def finish(self) -> None:
        """Write the component reads (see :meth:`_read`)."""
        for p, (line, n, ind, h) in self._reads.items():
            self.lines[line] = "    " * ind + f"{p} = {self.components}(view, {h}, {n})"


class Lowering:
    """Generates, compiles and binds the units of one mapping folder (one per format).

    Objects the generated code uses (closures it calls, constants, tables, templates)
    live in the module namespace ``ns`` under generated names; the source never holds a
    value that is not a plain literal."""

    def __init__(self, cache: CodeCache | None = None, view: Any = None) -> None:
        self.ns: dict[str, Any] = {
            "__name__": "gateway.mapping.generated",
            "_DROPPED": _DROPPED,
            "MappingError": MappingError,
            "_convert": _convert,
        }
        self._names: dict[int, str] = {}
        # The view class that reads this folder's records, when it offers accessors
        # (look-ups resolved per path here, once: Hl7View.accessor); else paths are
        # passed to the view's methods at each call (DICOM, CDA).
        self.view = view if callable(getattr(view, "accessor", None)) else None
        self._accessors: dict[tuple[str, str], str] = {}
        self._units = 0
        self.cache = cache
        self.sources: list[str] = []  # every unit's source, in order (the cache's .py file)

    # -- units -------------------------------------------------------------------------
    def __call__(self, fn: Fn, unit: str) -> Fn:
        """The generated function for the compiled spec ``fn`` (``fn`` itself when the
        generated code does not compile: correctness first)."""
        if fn in _CONSTANTS or fn not in SHAPES:
            return fn  # nothing to gain: a constant, or a closure called as it is
        self._units += 1
        name = f"unit_{self._units}"
        source = self.source(fn, name, unit)
        try:
            code = (
                self.cache.code(name, source)
                if self.cache
                else compile(source, f"<mapping {unit}>", "exec")
            )
            exec(code, self.ns)
        except (SyntaxError, RecursionError, MemoryError, ValueError) as exc:
            log.warning("mapping %s: generated code refused (%s); closures used", unit, exc)
            return fn
        self.sources.append(source)
        generated: Fn = self.ns[name]
        return generated

    def source(self, fn: Fn, name: str, unit: str) -> str:
        reads = getattr(self.view, "components", None)
        f = _Func(
            self._accessor if self.view is not None else None,
            self._name(reads, "CP") if reads is not None else None,
        )
        f.add(0, f"def {name}(ctx):  # {unit}")
        f.add(1, "view = ctx.view")
        if self.view is not None:
            # Accessors read the view's tables directly: any other view (none in the
            # gateway: a folder's records are all read by one view class) gets the
            # closures, the reference implementation.
            f.add(1, f"if view.__class__ is not {self._name(self.view, 'V')}:")
            f.add(2, f"return {self._name(fn, 'F')}(ctx)")
        f.add(1, "state = ctx.state")
        f.add(1, "h0 = ctx.here")
        self.emit(f, fn, "result", "ctx", "h0", 1)
        f.add(1, "return result")
        f.finish()
        return "\n".join(f.lines) + "\n"

    def _name(self, obj: Any, prefix: str) -> str:
        """The namespace name of ``obj`` (the same object, the same name)."""
        found = self._names.get(id(obj))
        if found is None:
            found = f"{prefix}{len(self._names) + 1}"
            self._names[id(obj)] = found
            self.ns[found] = obj
        return found

    def _accessor(self, method: str, path: str) -> str:
        """The namespace name of the view's accessor for ``view.<method>(path, ...)``, one
        per (method, path) in the folder."""
        found = self._accessors.get((method, path))
        if found is None:
            assert self.view is not None
            found = self._name(self.view.accessor(method, path), "A")
            self._accessors[(method, path)] = found
        return found

    def _value(self, value: Any) -> str:
        lit = _literal(value)
        return lit if lit is not None else self._name(value, "K")

    # -- values ------------------------------------------------------------------------
    def emit(self, f: _Func, fn: Fn, t: str, c: str, h: str, ind: int) -> None:
        """Code that sets ``t`` to ``fn``'s value at context ``c`` (its node in ``h``)."""
        if fn in _CONSTANTS:
            f.add(ind, f"{t} = {self._value(_CONSTANTS[fn])}")
            return
        shape = SHAPES.get(fn)
        if shape is not None and shape[0] == "every":
            if ind <= _MAX_DEPTH and self._lowers_every(*shape[1:]):
                self._every(f, t, c, h, ind, fn, *shape[1:])
                return
            shape = None  # called as it is
        if shape is None or ind > _MAX_DEPTH:
            own = self._own(fn) if ind <= _MAX_DEPTH else None
            if own is not None:
                self.emit(f, own, t, c, h, ind)
                return
            f.add(ind, f"{t} = {self._name(fn, 'F')}({c})")
            return
        getattr(self, "_" + shape[0].replace("-", "_"))(f, t, c, h, ind, *shape[1:])

    @staticmethod
    def _own(fn: Fn, sites: tuple[str, ...] = ()) -> Fn | None:
        """The spec whose value the memoised ``fn`` gives, when its keys are a record's
        own (see _memo.own_keys; ``sites``: the paths of the node it is called at, each one
        tried in turn); else None."""
        scope: Scope | None = MEMO_SCOPES.get(fn)
        inner = SAME_AS.get(fn)
        if scope is None or inner is None:
            return None
        if own_keys(scope) or (sites and all(_own_site(site) for site in sites)):
            return inner
        return None

    def _at_node(self, f: _Func, fn: Fn, t: str, c: str, h: str, ind: int) -> None:
        """``fn``'s value at node ``h``, from context ``c`` (made elsewhere for another
        node): a context for ``h`` made only if the code uses it."""
        c2 = f.var("c")
        f.make_at(ind, c2, c, h)
        self.emit(f, fn, t, c2, h, ind)
        f.unused(c2)

    @staticmethod
    def _at_error(f: _Func, c: str, ind: int) -> str:
        """The context ``c`` for an error (or other rare) path: when ``c`` was made for a
        node (``ctx.at``), one made here, so that the line making ``c`` can be dropped
        when no value needs it (an error names its field from the context's node)."""
        made = f.nodes.get(c)
        if made is None or c not in f.made:
            return c
        e = f.var("e")
        f.add(ind, f"{e} = {_maker(f, made[0])}.at({made[1]})")
        return e

    def _plain(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        alt, missing, fallback = shape
        f.add(ind, f"{t} = {f.look(ind, 'first', alt, h)}")
        if fallback:
            f.add(ind, f"if {t} is None:")
            self._missing(f, t, c, ind + 1, missing, alt)

    def _missing(self, f: _Func, t: str, c: str, ind: int, missing: Any, path: str) -> None:
        shape = SHAPES.get(missing)
        if shape is None:
            e = self._at_error(f, c, ind)
            f.add(ind, f"{t} = {self._name(missing, 'F')}({e}, {path!r})")
            return
        default, required = shape[1], shape[2]
        if default is not None:
            f.add(ind, f"{t} = {self._value(default)}")
        elif required:  # raises, naming the field
            e = self._at_error(f, c, ind)
            f.add(ind, f"{t} = {self._name(missing, 'F')}({e}, {path!r})")
        else:
            f.add(ind, f"{t} = None")

    def _leaf(
        self, f: _Func, t: str, v: str, label: str, c: str, ind: int, leaf: Any, alt: str = ""
    ) -> None:
        """``t = leaf(v, label, c)``: the ``as`` conversion called directly when it is the
        only step and the value's label is not known (a path): a refused value goes to
        ``_convert``, which converts it again (converters are pure) to name the field and
        apply the leniency rules; a code table looked up inline. ``alt``: the path read,
        set as ``ctx.label_of`` (what names the field in an error) only on the way to an
        error, not for every value."""
        shape = SHAPES.get(leaf)
        if shape == ("identity",):
            f.add(ind, f"{t} = {v}")
            return
        if shape is not None and shape[0] == "leaf":
            kind, table = shape[1], shape[2]
            if table is None and label == "None":
                f.add(ind, "try:")
                tz = f"{_base(f, c)}.tz"  # the same zone in every context made from it
                f.add(ind + 1, f"{t} = {self._name(CONVERTERS[kind], 'CV')}({v}, '', {tz})")
                f.add(ind, "except MappingError:")
                e = self._at_error(f, c, ind + 1)
                self._label_of(f, e, ind + 1, alt)
                f.add(ind + 1, f"{t} = _convert({kind!r}, {v}, None, {e})")
                return
            if kind is None:
                # the value is text (a path's, or a variable's found to be a str)
                f.add(ind, f"{t} = {self._lookup(table, v)}")
                if not table.has_default:  # an unknown code: the leaf raises, naming it
                    f.add(ind, f"if {t} is None:")
                    e = self._at_error(f, c, ind + 1)
                    self._label_of(f, e, ind + 1, alt)
                    f.add(ind + 1, f"{t} = {self._name(leaf, 'L')}({v}, {label}, {e})")
                return
        self._label_of(f, c, ind, alt)
        f.add(ind, f"{t} = {self._name(leaf, 'L')}({v}, {label}, {c})")

    def _lookup(self, table: Any, v: str) -> str:
        """``table.lookup(v)`` as an expression: its dict read directly (the tables are
        read only once loaded), the code upper-cased unless the table is case-sensitive,
        its default (or None) for a code it lacks. A table of another kind is asked."""
        if type(table) is not CodeTable:
            return f"{self._name(table, 'TB')}.lookup({v})"
        key = v if table.case_sensitive else f"{v}.upper()"
        default = self._value(table.default) if table.has_default else "None"
        return f"{self._name(table.mapping, 'TM')}.get({key}, {default})"

    @staticmethod
    def _label_of(f: _Func, c: str, ind: int, alt: str) -> None:
        if alt:
            f.add(ind, f"{c}.label_of = {alt!r}")

    def _path(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        alts, leaf, missing, _ = shape
        v = f.var("v")
        if _never_drops(leaf) and (len(alts) == 1 or not _may_raise(leaf)):
            # The first alternative with a value is the one converted (its label is
            # needed only for an error, hence one alternative when the leaf may raise)
            f.add(ind, f"{v} = {f.look(ind, 'first', alts[0], h)}")
            level = ind
            for alt in alts[1:]:
                f.add(level, f"if {v} is None:")
                level += 1
                f.add(level, f"{v} = {f.look(level, 'first', alt, h)}")
            f.add(ind, f"if {v} is not None:")
            self._leaf(f, t, v, "None", c, ind + 1, leaf, alts[0])
            f.add(ind, "else:")
            self._missing(f, t, c, ind + 1, missing, alts[0])
            return
        f.add(ind, f"{t} = _DROPPED")
        for n, alt in enumerate(alts):
            inner = ind
            if n:
                f.add(ind, f"if {t} is _DROPPED:")
                inner = ind + 1
            f.add(inner, f"{v} = {f.look(inner, 'first', alt, h)}")
            f.add(inner, f"if {v} is not None:")
            self._leaf(f, t, v, "None", c, inner + 1, leaf, alt)
        f.add(ind, f"if {t} is _DROPPED:")
        self._missing(f, t, c, ind + 1, missing, alts[0])

    def _lowers_every(self, alts: tuple[str, ...], leaf: Any, missing: Any, sep: Any) -> bool:
        """Whether a ``*`` path (all its values) is generated (:meth:`_every`): one path
        whose values are taken as they are, read by a view with a ``texts`` accessor."""
        if len(alts) != 1 or SHAPES.get(leaf) != ("identity",) or self.view is None:
            return False
        try:
            self._accessor("texts", alts[0])
        except ValueError:  # no such accessor for this path (a relative one, MSH-1)
            return False
        return True

    def _every(self, f: _Func, t: str, c: str, h: str, ind: int, fn: Fn, *shape: Any) -> None:
        """A ``*`` path's values (joined with ``sep``), read by the view's ``texts``
        accessor without their terser paths (none is needed: the values are taken as
        they are); when it gives None (values that need their names, see
        gateway/intake/hl7v2/_view.py), by the closure ``fn``."""
        alts, _, missing, sep = shape
        vs = f.var("x")
        f.add(ind, f"{vs} = {self._accessor('texts', alts[0])}(view, {h})  # {alts[0]}")
        f.add(ind, f"if {vs} is None:")
        f.add(ind + 1, f"{t} = {self._name(fn, 'F')}({self._at_error(f, c, ind + 1)})")
        f.add(ind, f"elif {vs}:")
        f.add(ind + 1, f"{t} = {vs}" if sep is None else f"{t} = {sep!r}.join({vs})")
        f.add(ind, "else:")
        self._missing(f, t, c, ind + 1, missing, alts[0])

    def _var(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        name, leaf, missing = shape
        label = f"${name}"
        v = f.var("v")
        f.add(ind, f"{v} = {_read_var(f, c, name)}")
        f.add(ind, f"if not {v} and {_EMPTY.format(v)}:")
        self._missing(f, t, c, ind + 1, missing, label)
        if SHAPES.get(leaf) == ("identity",):  # any value as it is, text or not
            f.add(ind, "else:")
            f.add(ind + 1, f"{t} = {v}")
            return
        f.add(ind, f"elif not isinstance({v}, str):")
        f.add(ind + 1, f"{t} = {v}")
        f.add(ind, "else:")
        self._leaf(f, t, v, repr(label), c, ind + 1, leaf)
        if SHAPES.get(leaf) != ("identity",):
            f.add(ind + 1, f"if {t} is _DROPPED:")
            self._missing(f, t, c, ind + 2, missing, label)

    def _extend(self, f: _Func, out: str, fn: Fn, v: str, ind: int) -> None:
        """``_compile._extend(out, v)``, knowing what ``fn`` can give."""
        if fn in _CONSTANTS:
            value = _CONSTANTS[fn]
            if isinstance(value, list):
                f.add(ind, f"{out}.extend([x for x in {v} if x or not {_EMPTY.format('x')}])")
            elif value or not _empty_value(value):
                f.add(ind, f"{out}.append({v})")
            return
        if _truthy_or_none(fn):
            f.add(ind, f"if {v}:")
            f.add(ind + 1, f"{out}.append({v})")
            return
        if _list_or_none(fn):  # its items are not empty: checked when it was made
            f.add(ind, f"if {v}:")
            f.add(ind + 1, f"{out}.extend({v})")
            return
        f.add(ind, f"if isinstance({v}, list):")
        f.add(ind + 1, f"{out}.extend([x for x in {v} if x or not {_EMPTY.format('x')}])")
        f.add(ind, f"elif {_not_empty(v)}:")
        f.add(ind + 1, f"{out}.append({v})")

    def _list(self, f: _Func, t: str, c: str, h: str, ind: int, fns: list[Fn]) -> None:
        out, v = f.var("o"), f.var("v")
        f.add(ind, f"{out} = []")
        for fn in fns:
            self.emit(f, fn, v, c, h, ind)
            self._extend(f, out, fn, v, ind)
        if len(fns) > 1 or not _truthy_or_none(fns[0]):  # else one value at most
            f.add(ind, f"if len({out}) > 1:  # the same value from two sources is listed once")
            # two values (the usual case): compared as ``in`` compares, without the
            # comprehension's call
            f.add(ind + 1, f"if len({out}) == 2:")
            f.add(ind + 2, f"if {out}[0] is {out}[1] or {out}[0] == {out}[1]:")
            f.add(ind + 3, f"del {out}[1]")
            f.add(ind + 1, "else:")
            f.add(ind + 2, f"{out} = [x for i, x in enumerate({out}) if x not in {out}[:i]]")
        f.add(ind, f"{t} = {out} or None")

    def _object(self, f: _Func, t: str, c: str, h: str, ind: int, steps: Any) -> None:
        out, v = f.var("o"), f.var("v")
        head: list[str] = []  # leading constant members: a dict literal (key order kept)
        rest = list(steps)
        while rest and rest[0][1] is not _VARIES:
            key, value, _ = rest.pop(0)
            if not _empty_value(value):
                head.append(f"{key!r}: {self._value(value)}")
        f.add(ind, f"{out} = {{{', '.join(head)}}}")
        for key, value, fn in rest:
            if value is not _VARIES:
                if not _empty_value(value):
                    f.add(ind, f"{out}[{key!r}] = {self._value(value)}")
                continue
            self.emit(f, fn, v, c, h, ind)
            test = v if _none_if_false(fn) else _not_empty(v)
            f.add(ind, f"if {test}:")
            f.add(ind + 1, f"{out}[{key!r}] = {v}")
        f.add(ind, f"{t} = {out} or None")

    def _when(self, f: _Func, t: str, c: str, h: str, ind: int, cond: Any, inner: Fn) -> None:
        b = f.var("b")
        self.condition(f, cond, b, c, h, ind)
        f.add(ind, f"if {b}:")
        self.emit(f, inner, t, c, h, ind + 1)
        f.add(ind, "else:")
        f.add(ind + 1, f"{t} = None")

    def _first(self, f: _Func, t: str, c: str, h: str, ind: int, fns: list[Fn]) -> None:
        for n, fn in enumerate(fns):
            level = ind + n
            self.emit(f, fn, t, c, h, level)
            f.add(level, f"if not {t}:" if _none_if_false(fn) else f"if not {_not_empty(t)}:")
        f.add(ind + len(fns), f"{t} = None")

    def _join(self, f: _Func, t: str, c: str, h: str, ind: int, fns: list[Fn], sep: str) -> None:
        parts, v = f.var("p"), f.var("v")
        f.add(ind, f"{parts} = []")
        for fn in fns:
            self.emit(f, fn, v, c, h, ind)
            self._extend(f, parts, fn, v, ind)
        f.add(ind, f"{t} = {sep!r}.join(map(str, {parts})) or None")

    def _ref(
        self, f: _Func, t: str, c: str, h: str, ind: int, key: str, display: Fn | None
    ) -> None:
        """A reference to the resource made under ``key`` (a literal): the Bundle asked
        inline, as _compile's ``ref`` does it (its display read even without a URL)."""
        u, o = f.var("u"), f.var("o")
        self._ref_url(f, u, ind, key)
        f.add(ind, f"{o} = {{'reference': {u}}} if {u} else {{}}")
        if display is not None:
            v = f.var("v")
            self.emit(f, display, v, c, h, ind)
            f.add(ind, f"if {_not_empty(v)}:")
            f.add(ind + 1, f"{o}['display'] = {v}")
        f.add(ind, f"{t} = {o} or None")

    def _id_of(self, f: _Func, t: str, c: str, h: str, ind: int, key: str) -> None:
        """The id of the resource made under ``key`` (a literal), as _compile's ``id-of``
        finds it: its URL's last part (a patient's, for its diagnoses' identifiers)."""
        u = f.var("u")
        self._ref_url(f, u, ind, key)
        f.add(ind, f"{t} = {u}.rsplit(':', 1)[-1] if {u} else None")

    def _ref_url(self, f: _Func, u: str, ind: int, key: str) -> None:
        """``u`` = the URL of the resource made under ``key``, or None."""
        f.add(ind, f"{u} = state.ref({key!r})")

    def _refs(self, f: _Func, t: str, c: str, h: str, ind: int, key: str) -> None:
        """References to every resource made under ``key`` (a literal), as ``refs``."""
        f.add(ind, f"{t} = [{{'reference': u}} for u in state.refs({key!r})] or None")

    def _fn(self, f: _Func, t: str, c: str, h: str, ind: int, func: Any, args: Any) -> None:
        named = []
        for key, fn in args:
            v = f.var("a")
            self.emit(f, fn, v, c, h, ind)
            named.append((key, v))
        if all(k.isidentifier() and not keyword.iskeyword(k) for k, _ in named):
            call = ", ".join(f"{k}={v}" for k, v in named)
        else:
            call = "**{" + ", ".join(f"{k!r}: {v}" for k, v in named) + "}"
        sep = ", " if named else ""
        env = f"{_base(f, c)}.env"  # the same in every context made from it
        f.add(ind, f"{t} = {self._name(func, 'FN')}({env}{sep}{call})")

    def _with(self, f: _Func, c: str, h: str, ind: int, extra: dict[str, Fn]) -> str:
        """``ctx.with_vars`` of the ``with``/``vars`` specs, each evaluated at ``c``; when
        ``c`` was made for node ``h`` (``ctx.at``) and the specs did not need it, one
        context is made instead of two (``ctx.at_with``)."""
        if not extra:
            return c
        values = {}
        for key, fn in extra.items():
            v = f.var("w")
            self.emit(f, fn, v, c, h, ind)
            values[key] = v
        c2 = f.var("c")
        literal = "{" + ", ".join(f"{k!r}: {v}" for k, v in values.items()) + "}"
        if c in f.nodes and f.unused(c):  # made by ctx.at (no variables of its own)
            maker = _maker(f, f.scopes[c][0])  # at_with replaces the node: any context
            f.made[c2] = len(f.lines)  # dropped if unused (the variables are read here)
            f.add(ind, f"{c2} = {maker}.at_with({h}, {literal})")
            f.scopes[c2] = (maker, values)
        else:
            f.made[c2] = len(f.lines)
            f.add(ind, f"{c2} = {c}.with_vars({literal})")
            f.scopes[c2] = (c, values)
        return c2

    def _at(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        at, extra, body = shape
        if at is None:
            self.emit(f, body, t, self._with(f, c, h, ind, extra), h, ind)
            return
        nodes, h2, c2 = f.var("n"), f.var("h"), f.var("c")
        f.add(ind, f"{nodes} = {f.look(ind, 'select', at[0], h)}")
        for alt in at[1:]:
            f.add(ind, f"if not {nodes}:")
            f.add(ind + 1, f"{nodes} = {f.look(ind + 1, 'select', alt, h)}")
        f.add(ind, f"if {nodes}:")
        f.add(ind + 1, f"{h2} = {nodes}[0]")
        if not extra and self._direct(f, body, t, c, h2, ind + 1, tuple(at)):
            pass  # run at the node without a context made for it
        else:
            f.make_at(ind + 1, c2, c, h2)
            c3 = self._with(f, c2, h2, ind + 1, extra)
            self.emit(f, self._own(body, tuple(at)) or body, t, c3, h2, ind + 1)
            f.unused(c3)
            f.unused(c2)
        f.add(ind, "else:")
        f.add(ind + 1, f"{t} = None")

    def _direct(
        self, f: _Func, body: Fn, t: str, c: str, h: str, ind: int, sites: tuple[str, ...] = ()
    ) -> bool:
        """Code for ``body`` at node ``h`` (selected by a path of ``sites``) from context ``c``
        when it needs no context of its own there: a memoised spec, or an entry whose
        fields are one, takes the node as it is (``cached(ctx, node)``,
        gateway/mapping/_memo.py), or is generated inline when its keys are the record's
        own (:meth:`_own`); False otherwise."""
        c = _maker(f, c)
        if body in MEMOS:
            own = self._own(body, sites)
            if own is not None:
                self._at_node(f, own, t, c, h, ind)
            else:
                f.add(ind, f"{t} = {self._name(body, 'F')}({c}, {h})")
            return True
        shape = SHAPES.get(body)
        if shape is not None and shape[0] == "add" and shape[2].fields in MEMOS:
            key, template = shape[1], shape[2]
            own = self._own(template.fields, sites)
            if own is not None:
                fields = f.var("v")
                self._at_node(f, own, fields, c, h, ind)
            else:
                fields = f"{self._name(template.fields, 'T')}({c}, {h})"
            rt = self._name(template, "R")
            f.add(ind, f"state.add({key!r}, {rt}, {fields} or {{}}, {h})")
            f.add(ind, f"{t} = None")
            return True
        return False

    @contextmanager
    def _loop(
        self, f: _Func, c: str, h: str, ind: int, selector: str, keep: Any, ctx: bool = True
    ) -> Iterator[tuple[str, str]]:
        """``for`` each node of ``selector`` that ``keep`` keeps: yields its (ctx, here);
        without ``ctx``, no context is made for the node and ``c`` itself is yielded."""
        h2, c2 = f.var("h"), f.var("c")
        f.add(ind, f"for {h2} in {f.look(ind, 'select', selector, h)}:")
        if not ctx:
            yield c, h2
            return
        f.make_at(ind + 1, c2, c, h2)
        if keep is not None:
            b = f.var("b")
            self.condition(f, keep, b, c2, h2, ind + 1)
            f.add(ind + 1, f"if not {b}:")
            f.add(ind + 2, "continue")
        yield c2, h2
        f.unused(c2)

    def _each(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        selector, keep, body = shape
        out, v = f.var("o"), f.var("v")
        f.add(ind, f"{out} = []")
        with self._loop(f, c, h, ind, selector, keep, self._needs_ctx(keep, body)) as (c2, h2):
            if c2 == c:
                self._direct(f, body, v, c, h2, ind + 1, (selector,))
            else:
                self.emit(f, body, v, c2, h2, ind + 1)
            self._extend(f, out, body, v, ind + 1)
        f.add(ind, f"{t} = {out} or None")

    @staticmethod
    def _needs_ctx(keep: Any, body: Fn) -> bool:
        if keep is not None:
            return True
        if body in MEMOS:
            return False
        shape = SHAPES.get(body)
        return not (shape is not None and shape[0] == "add" and shape[2].fields in MEMOS)

    # -- resource entries --------------------------------------------------------------
    def _add(self, f: _Func, t: str, c: str, h: str, ind: int, key: str, template: Any) -> None:
        own = self._own(template.fields)
        if own is not None:
            v = f.var("v")
            self.emit(f, own, v, c, h, ind)
            fields = v
        else:
            fields = f"{self._name(template.fields, 'T')}({c})"
        f.add(ind, f"state.add({key!r}, {self._name(template, 'R')}, {fields} or {{}}, {h})")
        f.add(ind, f"{t} = None")

    def _each_entry(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        selector, keep, body = shape
        with self._loop(f, c, h, ind, selector, keep, self._needs_ctx(keep, body)) as (c2, h2):
            if c2 == c:
                self._direct(f, body, f.var("v"), c, h2, ind + 1, (selector,))
            else:
                self.emit(f, body, f.var("v"), c2, h2, ind + 1)
        f.add(ind, f"{t} = None")

    def _checked(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        key, required, at, inner = shape
        before = f.var("n")
        f.add(ind, f"{before} = state.count({key!r})")
        self.emit(f, inner, t, c, h, ind)
        f.add(ind, f"if state.count({key!r}) == {before}:")
        f.add(
            ind + 1,
            f"raise MappingError('required', {required!r}, location={self._value(at)})",
        )
        f.add(ind, f"{t} = None")

    def _group(self, f: _Func, t: str, c: str, h: str, ind: int, *shape: Any) -> None:
        selector, cond, keep, extra, children, export, required, required_at = shape
        f.add(ind, f"{t} = None")
        if cond is not None:
            b = f.var("b")
            self.condition(f, cond, b, c, h, ind)
            f.add(ind, f"if {b}:")
            ind += 1
        kept = f.var("k")
        f.add(ind, f"{kept} = 0")
        with self._loop(f, c, h, ind, selector, keep) as (c2, h2):
            f.add(ind + 1, f"{kept} += 1")
            c3 = self._with(f, c2, h2, ind + 1, extra)
            f.add(ind + 1, "state.push()")
            f.add(ind + 1, "try:")
            for child in children:
                self.emit(f, child, f.var("v"), c3, h2, ind + 2)
            if not children:
                f.add(ind + 2, "pass")
            f.add(ind + 1, "finally:")
            f.add(ind + 2, f"state.pop({self._value(export)})")
            if c3 != c2:
                f.unused(c3)
        if required:
            f.add(ind, f"if not {kept}:  # none there, or none that 'where' keeps")
            f.add(
                ind + 1,
                f"raise MappingError('required', {str(required)!r}, location={required_at!r})",
            )

    def _seq(self, f: _Func, t: str, c: str, h: str, ind: int, entries: list[Fn]) -> None:
        for entry in entries:
            self.emit(f, entry, f.var("v"), c, h, ind)
        f.add(ind, f"{t} = None")

    # -- conditions --------------------------------------------------------------------
    def condition(self, f: _Func, cond: Any, b: str, c: str, h: str, ind: int) -> None:
        """Code that sets ``b`` to a value as true as ``cond`` at ``c``."""
        shape = SHAPES.get(cond)
        if shape is None or ind > _MAX_DEPTH:
            f.add(ind, f"{b} = {self._name(cond, 'C')}({c})")
            return
        kind = shape[0]
        if kind == "present":
            value = shape[1]
            vs = SHAPES.get(value)
            if vs is not None and vs[0] == "plain" and not vs[3]:
                f.add(ind, f"{b} = {f.look(ind, 'first', vs[1], h)} is not None")
                return
            v = f.var("v")
            self.emit(f, value, v, c, h, ind)
            test = f"{v} is not None" if _none_if_false(value) else _not_empty(v)
            f.add(ind, f"{b} = {test}")
        elif kind == "not":
            self.condition(f, shape[1], b, c, h, ind)
            f.add(ind, f"{b} = not {b}")
        elif kind in ("all", "any"):
            f.add(ind, f"{b} = {kind == 'all'}")
            level = ind
            for part in shape[1]:
                self.condition(f, part, b, c, h, level)
                f.add(level, f"if {'' if kind == 'all' else 'not '}{b}:")
                level += 1
            f.add(level, "pass")
        else:  # equals, in
            v = f.var("v")
            self.emit(f, shape[1], v, c, h, ind)
            op = "==" if kind == "equals" else "in"
            expected = shape[2]
            if _text_or_none(shape[1]) and "" not in ([expected] if kind == "equals" else expected):
                # None (absent) matches nothing but '', which is not expected: no str()
                f.add(ind, f"{b} = {v} {op} {self._value(expected)}")
            else:
                f.add(ind, f"{b} = str({v} or '') {op} {self._value(expected)}")


_COMPONENT = re.compile(r"\.([1-9]\d*)(?:\.1)?\Z")


def _component(path: str) -> int:
    """C for a relative path ``.C`` or ``.C.1`` (the same value: a component is read up
    to its first subcomponent), else 0."""
    m = _COMPONENT.match(path)
    return int(m[1]) if m else 0


def _read_var(f: _Func, c: str, name: str) -> str:
    """``c.vars.get(name)``: the variable holding the value when a ``with``/``vars`` of
    this function set it, else read from the first context not made here."""
    while c in f.scopes:
        c, added = f.scopes[c]
        if name in added:
            return added[name]
    return f"{c}.vars.get({name!r})"


def _base(f: _Func, c: str) -> str:
    """The first context ``c`` was made from here (``at``, ``at_with``, ``with_vars``):
    the same view, state, zone and environment, which none of them changes."""
    while c in f.scopes:
        c = f.scopes[c][0]
    return c


def _maker(f: _Func, c: str) -> str:
    """The context ``c`` was made from by ``ctx.at`` alone, as far back as that goes:
    the same variables, state, zone and leniency, only another node (which a memoised
    spec called as ``cached(ctx, node)`` does not read)."""
    while c in f.scopes and not f.scopes[c][1]:
        c = f.scopes[c][0]
    return c


def _never_drops(leaf: Any) -> bool:
    """Whether ``leaf`` never gives _DROPPED: no conversion (only a lenient field's
    refused conversion is dropped), the value as it is or looked up in a table."""
    shape = SHAPES.get(leaf)
    return shape == ("identity",) or (shape is not None and shape[0] == "leaf" and not shape[1])


def _may_raise(leaf: Any) -> bool:
    """Whether ``leaf`` (one that never drops) may raise: a table without a default."""
    shape = SHAPES.get(leaf)
    return shape is not None and shape[0] == "leaf" and not shape[2].has_default


def _empty_value(value: Any) -> bool:
    return not value and (value is None or value == "" or value == [] or value == {})


def _none_if_false(fn: Fn) -> bool:
    """Whether ``fn`` gives either None or a true value (an object, a list, references, a
    path's text without a default): then ``if v:`` is the whole emptiness test."""
    shape = _shape(fn)
    if shape is None:
        return False
    kind = shape[0]
    if kind == "when":
        return _none_if_false(shape[2])
    if kind == "first":
        return all(_none_if_false(part) for part in shape[1])
    return kind in ("object", "list", "each", "join", "ref", "refs") or _text_or_none(fn)


def _text_or_none(fn: Fn) -> bool:
    """Whether ``fn`` gives None or a non-empty str: a path's text (the view gives no
    empty value), as it is or with a non-empty text default, or a ``join``."""
    shape = _shape(fn)
    if shape is None:
        return False
    kind: str = shape[0]
    if kind == "when":
        return _text_or_none(shape[2])
    if kind == "first":
        return all(_text_or_none(part) for part in shape[1])
    if kind == "plain":
        return not shape[3] or _text_default(shape[2])  # (alt, missing, fallback)
    if kind == "path":  # (alts, leaf, missing, ...)
        return SHAPES.get(shape[2]) == ("identity",) and _text_default(shape[3])
    return kind == "join"


def _list_or_none(fn: Fn) -> bool:
    """Whether ``fn`` gives None or a list without empty items (``each``, a list, ``refs``)."""
    shape = _shape(fn)
    if shape is None:
        return False
    if shape[0] == "when":
        return _list_or_none(shape[2])
    return shape[0] in ("each", "list", "refs")


def _shape(fn: Fn) -> tuple[Any, ...] | None:
    """What ``fn`` is, or what the closure is whose value a memoised or generated
    fragment gives (SAME_AS)."""
    shape = SHAPES.get(fn)
    if shape is None:
        same = SAME_AS.get(fn)
        shape = SHAPES.get(same) if same is not None else None
    return shape


def _text_default(missing: Any) -> bool:
    """Whether an empty path's ``missing`` gives None, raises, or gives non-empty text."""
    shape = SHAPES.get(missing)
    if shape is None:
        return False
    default = shape[1]
    return default is None or (isinstance(default, str) and default != "")


def _truthy_or_none(fn: Fn) -> bool:
    """:func:`_none_if_false`, and never a list."""
    shape = _shape(fn)
    if shape is None:
        return False
    if shape[0] == "when":
        return _truthy_or_none(shape[2])
    return shape[0] in ("object", "join", "ref") or (shape[0] == "plain" and not shape[3])


def seq(entries: list[Fn]) -> Fn:
    """One spec running ``entries`` in order (a message's resources), for lowering."""

    def run(ctx: Ctx) -> None:
        for entry in entries:
            entry(ctx)

    SHAPES[run] = ("seq", entries)
    return run


# -- the cache on disk ----------------------------------------------------------------------


def cache_dir(env: dict[str, str] | None = None) -> Path | None:
    """Where generated code is cached: ``GATEWAY_MAPPING_CACHE`` (``off``: nowhere), else
    ``$GATEWAY_HOME/cache/mappings``, else the user cache dir (``$XDG_CACHE_HOME`` or
    ``~/.cache``) ``/fhir-gateway/mappings``."""
    env = env if env is not None else dict(os.environ)
    explicit = env.get("GATEWAY_MAPPING_CACHE")
    if explicit:
        return None if explicit == "off" else Path(explicit).expanduser()
    if env.get("GATEWAY_HOME"):
        return Path(env["GATEWAY_HOME"]).expanduser() / "cache" / "mappings"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "fhir-gateway" / "mappings"


def folder_key(folder: Path) -> str:
    """Hash of the mapping files under ``folder`` (names and bytes), the generator's
    version and the Python that compiles (code objects are version-specific)."""
    h = hashlib.sha256(f"{GENERATOR_VERSION}|{sys.version}|{folder.name}".encode())
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:32]


class CodeCache:
    """Compiled units of one mapping folder on disk: ``<key>.marshal`` (each unit's code
    with the SHA-256 of the source it came from) and ``<key>.py`` (the source, to read).
    A unit whose source hash differs, or a file that does not load, is compiled again;
    a cache that cannot be written is skipped (logged), never an error."""

    def __init__(self, folder: Path, key: str) -> None:
        self.path = folder / f"{key}.marshal"
        self.units: dict[str, tuple[str, Any]] = {}
        self.hits = 0
        self.dirty = False
        self._load()

    def _load(self) -> None:
        try:
            raw = marshal.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, EOFError, ValueError, TypeError) as exc:
            log.info("mapping code cache %s unreadable (%s): regenerated", self.path, exc)
            return
        if isinstance(raw, dict) and raw.get("version") == GENERATOR_VERSION:
            units = raw.get("units")
            if isinstance(units, dict):
                self.units = {
                    k: v
                    for k, v in units.items()
                    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str)
                }

    def code(self, name: str, source: str) -> Any:
        digest = hashlib.sha256(source.encode()).hexdigest()
        found = self.units.get(name)
        if found is not None and found[0] == digest and _is_code(found[1]):
            self.hits += 1
            return found[1]
        code = compile(source, f"<mapping {name}>", "exec")
        self.units[name] = (digest, code)
        self.dirty = True
        return code

    def save(self, sources: list[str]) -> None:
        if not self.dirty:
            return
        data = marshal.dumps({"version": GENERATOR_VERSION, "units": self.units})
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for target, body in (
                (self.path, data),
                (self.path.with_suffix(".py"), "\n\n".join(sources).encode()),
            ):
                tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(body)
                os.replace(tmp, target)  # readers see the old file or the new, never half
        except OSError as exc:
            log.info("mapping code cache %s not written: %s", self.path, exc)
            return
        self.dirty = False
        _prune(self.path.parent)


_KEEP = 16  # cache entries kept per cache dir (the newest): mapping folders, versions


def _prune(folder: Path) -> None:
    """Remove all but the newest _KEEP entries (edited mappings leave old ones behind)."""
    try:
        entries = sorted(folder.glob("*.marshal"), key=lambda p: p.stat().st_mtime)
        for old in entries[:-_KEEP]:
            old.unlink(missing_ok=True)
            old.with_suffix(".py").unlink(missing_ok=True)
    except OSError as exc:  # another process pruning at the same time
        log.info("mapping code cache %s not pruned: %s", folder, exc)


def _is_code(value: Any) -> bool:
    return type(value) is type(_is_code.__code__)


def lowering_for(folder: Path, env: dict[str, str] | None = None, view: Any = None) -> Lowering:
    """A :class:`Lowering` with the folder's on-disk cache when there is a cache dir;
    ``view``: the class reading the folder's records (its accessors are used if any)."""
    where = cache_dir(env)
    cache = CodeCache(where, folder_key(folder)) if where is not None else None
    return Lowering(cache, view)
