"""Compile mapping specs (YAML data) into closures, once, at load time.

A mistake in a mapping file (unknown key, bad path, unknown table or function) is a
ConfigError that names the file and the key, raised when the gateway starts rather
than in the middle of a batch. The language itself is documented in
docs/mapping-language.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast
from weakref import WeakKeyDictionary

from ..datafiles import load_data_file
from ..errors import ConfigError, Issue, MappingError
from ..intake import RecordView
from ..shared import freeze
from ._bundle import BundleBuilder, ResourceTemplate
from ._functions import FUNCTIONS, Env
from ._memo import Scope, memoised, own_keys
from ._strictness import Leniency
from ._types import CONVERTERS, convert

__all__ = ["Compiler", "Ctx", "Fn"]

Fn = Callable[["Ctx"], Any]
Cond = Callable[["Ctx"], bool]
_F = TypeVar("_F", bound=Callable[..., Any])

_CORE = (
    "path",
    "var",
    "const",
    "ref",
    "refs",
    "id-of",
    "each",
    "include",
    "first",
    "join",
    "fn",
    "object",
)
_MODIFIERS: dict[str, frozenset[str]] = {
    "path": frozenset({"as", "map", "default", "required", "message", "sep"}),
    "var": frozenset({"as", "map", "default", "required", "message"}),
    "const": frozenset(),
    "ref": frozenset({"display"}),
    "refs": frozenset(),
    "id-of": frozenset(),
    "first": frozenset(),
    "join": frozenset({"sep"}),
    "fn": frozenset({"args"}),
    "include": frozenset({"at", "with"}),
    "object": frozenset(),
}


@dataclass(slots=True)
class Ctx:
    """Evaluation state: the record view, where we stand in it, variables, the bundle."""

    view: RecordView  # what the engine reads the record through (gateway/intake/_unit.py)
    here: Any  # the view's position
    vars: dict[str, Any]
    state: BundleBuilder
    env: Env
    tz: str
    label_of: str = ""  # the path whose value is being converted (for error locations)
    lenient: Leniency | None = None  # fields whose malformed values are dropped (strict.yaml)

    def pending_label(self) -> str:
        return str(self.view.label(self.label_of, self.here)) if self.label_of else ""

    def at(self, here: Any) -> Ctx:
        return Ctx(self.view, here, self.vars, self.state, self.env, self.tz, "", self.lenient)

    def at_with(self, here: Any, extra: dict[str, Any]) -> Ctx:
        """``self.at(here).with_vars(extra)``, one context made (generated code)."""
        merged = {**self.vars, **extra}
        return Ctx(self.view, here, merged, self.state, self.env, self.tz, "", self.lenient)

    def with_vars(self, extra: dict[str, Any]) -> Ctx:
        merged = {**self.vars, **extra}
        return Ctx(self.view, self.here, merged, self.state, self.env, self.tz, "", self.lenient)


# What a leaf gives for a malformed value in a lenient field: read as absent (the next
# alternative of ``a | b`` is tried, a ``required`` path fails as empty).
_DROPPED: Any = object()


def _convert(kind: str, value: str, label: str | None, ctx: Ctx) -> Any:
    """``as:`` conversion; a refused value in a lenient field is dropped with a warning."""
    try:
        if not label:
            # The field's terser path is worked out only for an error: converters are
            # pure, so the refused value is converted again to name it.
            try:
                return convert(kind, value, "", ctx.tz)
            except MappingError:
                label = ctx.pending_label()
        return convert(kind, value, label, ctx.tz)
    except MappingError as exc:
        lenient = ctx.lenient
        if lenient is None or not lenient.allows(exc.location):
            raise
        ctx.state.warnings.append(
            Issue(
                "mapping.value-dropped",
                f"{exc.issue.message}; dropped: the field is optional ({lenient.source})",
                location=exc.location,
                severity="warning",
                details={"cause": exc.code},
            )
        )
        return _DROPPED


# Empty: None, "", [] or {}. Every value that is true is not (the common case, one
# truth test); of the false ones, 0 and False are values. The checks below are inlined
# on the hot paths: comparing a dict with "" costs more than its truth test.


def _empty(value: Any) -> bool:
    return not value and (value is None or value == "" or value == [] or value == {})


def _present(value: Any) -> bool:
    """not _empty(value), in one call (conditions run for every node)"""
    return bool(value) or not (value is None or value == "" or value == [] or value == {})


def _extend(out: list[Any], value: Any) -> None:
    if isinstance(value, list):
        out.extend([v for v in value if v or not _empty(v)])
    elif value or not _empty(value):
        out.append(value)


def _none(ctx: Ctx) -> None:
    return None


# Compiled specs whose value is fixed when the mappings load, with that value: an object
# or list made only of them is built once (frozen, as memoised values are: gateway/shared.py)
# instead of for every record. Keyed by the function itself; specs live as long as this.
_CONSTANTS: WeakKeyDictionary[Fn, Any] = WeakKeyDictionary()
_CONSTANTS[_none] = None
_VARIES: Any = object()

# What each compiled spec is, for the code generator (gateway/mapping/_codegen.py): the
# construct's name and the parts it was made of. A spec without an entry is called as it
# is from generated code (correct, only not inlined).
SHAPES: WeakKeyDictionary[Callable[..., Any], tuple[Any, ...]] = WeakKeyDictionary()


# A fragment's memoised or generated function → the closure whose value it gives (the
# same value, frozen when memoised: a FrozenDict is a dict, a FrozenList a list), for
# what the code generator knows of a value (gateway/mapping/_codegen.py).
SAME_AS: WeakKeyDictionary[Callable[..., Any], Fn] = WeakKeyDictionary()


def _shaped(fn: _F, *shape: Any) -> _F:
    SHAPES[fn] = shape
    return fn


def _constant(value: Any) -> Fn:
    def constant(ctx: Ctx) -> Any:
        return value

    _CONSTANTS[constant] = value
    return constant


def _folded(fns: list[Fn], make: Fn) -> Fn | None:
    """``make``'s value as a constant when every spec in ``fns`` is one; else None."""
    if all(fn in _CONSTANTS for fn in fns):
        return _constant(freeze(make(cast(Ctx, None))))
    return None


class Compiler:
    """Turns specs from one format folder (e.g. mappings/hl7v2) into closures."""

    def __init__(self, root: Path, env: Env, check_path: Callable[[str], None]) -> None:
        self.root = root
        self.env = env
        self._check_path = check_path
        self._fragments: dict[Path, Fn] = {}
        self._templates: dict[Path, ResourceTemplate] = {}
        self._purity: dict[Path, Scope] = {}
        self._including: set[Path] = set()
        self._scope = Scope()
        # Turns a compiled unit (a fragment's value, a template's fields, a message's
        # entries) into generated Python (gateway/mapping/_codegen.py); None: closures.
        self.lower: Callable[[Fn, str], Fn] | None = None

    def _lowered(self, fn: Fn, unit: str) -> Fn:
        return fn if self.lower is None else self.lower(fn, unit)

    # -- files -----------------------------------------------------------------------------
    def _file(self, rel: str, where: str) -> Path:
        path = (self.root / rel).resolve()
        if not path.is_file():
            raise ConfigError("missing-file", f"{where}: {rel!r} not found under {self.root}")
        return path

    def fragment(self, rel: str, where: str) -> Fn:
        path = self._file(rel, where)
        if path not in self._fragments:
            raw = load_data_file(path)
            if not isinstance(raw, dict) or "value" not in raw:
                raise ConfigError("fragment", f"{path}: a fragment file needs a 'value' spec")
            if path in self._including:
                raise ConfigError("include-cycle", f"{where}: {rel!r} includes itself")
            self._including.add(path)
            fn, scope = self._isolated(raw["value"], f"{path.name}: value")
            self._purity[path] = scope
            self._including.discard(path)
            lowered = self._lowered(fn, f"fragment {path.name}")
            self._fragments[path] = memoised(lowered, scope)
            for made in (lowered, self._fragments[path]):
                if made is not fn:
                    SAME_AS[made] = fn
        self._scope.absorb(self._purity.get(path, Scope()))
        return self._fragments[path]

    def _isolated(self, spec: Any, where: str) -> tuple[Fn, Scope]:
        """Compile ``spec`` and return what it reads, without leaking into the caller."""
        outer, self._scope = self._scope, Scope()
        try:
            return self.spec(spec, where), self._scope
        finally:
            self._scope = outer

    def template(self, rel: str, where: str) -> ResourceTemplate:
        path = self._file(rel, where)
        if path not in self._templates:
            raw = load_data_file(path)
            if not isinstance(raw, dict) or "resourceType" not in raw or "fields" not in raw:
                raise ConfigError(
                    "template", f"{path}: a resource template needs 'resourceType' and 'fields'"
                )
            fields, scope = self._isolated(raw["fields"], f"{path.name}: fields")
            refs = scope.refs
            lowered = self._lowered(fields, f"template {path.name}")
            made = memoised(lowered, scope)
            if made is not fields:
                SAME_AS[made] = fields
            fields = made
            identity = raw.get("identity") or {}
            self._templates[path] = ResourceTemplate(
                resource_type=str(raw["resourceType"]),
                fields=fields,
                identity_element=str(identity.get("element", "identifier")),
                prefer=tuple(str(c) for c in identity.get("prefer", ())),
                required=identity.get("required"),
                refs=frozenset(refs),
                source=path.name,
                location=identity.get("location"),
                # ids met again only when its fields are (memoised, not keyed by the
                # record's patient); the others (orders, reports read from the message
                # root) are the record's own
                recurs=made is not lowered and not own_keys(scope),
            )
        return self._templates[path]

    # -- specs -----------------------------------------------------------------------------
    def spec(self, spec: Any, where: str) -> Fn:
        if spec is None:
            return _none
        if isinstance(spec, (str, int, float, bool)):
            return _constant(spec)
        if isinstance(spec, list):
            fns = [self.spec(item, f"{where}[{i}]") for i, item in enumerate(spec)]

            def many(ctx: Ctx) -> Any:
                out: list[Any] = []
                for fn in fns:
                    value = fn(ctx)
                    # _extend(out, value), inlined: lists of names, codes, identifiers
                    if isinstance(value, list):
                        out.extend([v for v in value if v or not _empty(v)])
                    elif value or not _empty(value):
                        out.append(value)
                if len(out) > 1:  # the same name or code from two sources is listed once
                    out = [v for i, v in enumerate(out) if v not in out[:i]]
                return out or None

            return _folded(fns, many) or _shaped(many, "list", fns)
        if not isinstance(spec, dict):
            raise ConfigError("spec", f"{where}: unexpected {type(spec).__name__} in a mapping")
        # 'each' takes the rest of the mapping as its body: {each: PID-3, use: ...}
        cores = ["each"] if "each" in spec else [k for k in _CORE if k in spec]
        if len(cores) > 1:
            raise ConfigError("spec", f"{where}: {' and '.join(cores)} cannot be combined")
        if not cores:
            fn = self._object({k: v for k, v in spec.items() if k != "when"}, where)
        else:
            core = cores[0]
            if core != "each":
                extra = set(spec) - {core, "when"} - _MODIFIERS[core]
                if extra:
                    raise ConfigError("spec", f"{where}: {sorted(extra)} not allowed with {core!r}")
            if core == "object":
                fn = self._object(spec["object"], f"{where}.object")
            elif core == "id-of":
                fn = self._id_of(spec, where)
            else:
                fn = getattr(self, "_" + core)(spec, where)
        if "when" in spec:
            cond, inner = self.condition(spec["when"], f"{where}.when"), fn

            def guarded(ctx: Ctx) -> Any:
                return inner(ctx) if cond(ctx) else None

            return _shaped(guarded, "when", cond, inner)
        return fn

    def _object(self, spec: dict[str, Any], where: str) -> Fn:
        if "reference" in spec:
            self._scope.rooted = True  # a literal reference: the reference check must see it
        items = [(str(k), self.spec(v, f"{where}.{k}")) for k, v in spec.items()]
        # constants (a system URI, a fixed code) taken as they are, without a call
        steps = [(key, _CONSTANTS.get(fn, _VARIES), fn) for key, fn in items]

        def build(ctx: Ctx) -> Any:
            out: dict[str, Any] = {}
            for key, value, fn in steps:
                if value is _VARIES:
                    value = fn(ctx)
                # not _empty(value), inlined: this loop runs for every element of every resource
                if value or not (value is None or value == "" or value == [] or value == {}):
                    out[key] = value
            return out or None

        return _folded([fn for _, fn in items], build) or _shaped(build, "object", steps)

    def _check(self, path: str, where: str) -> None:
        try:
            self._check_path(path)
        except ConfigError as exc:
            raise ConfigError("bad-path", f"{where}: {exc.issue.message}") from None

    def _leaf(self, spec: dict[str, Any], where: str) -> Callable[[str, str | None, Ctx], Any]:
        """The per-value steps of a path or var: ``as`` conversion, then ``map`` table.

        ``label`` is the value's terser path when already known; otherwise the caller's
        ``ctx.label`` works it out, and only when an error needs it.
        """
        kind = spec.get("as")
        if kind is not None and kind not in CONVERTERS:
            raise ConfigError("spec", f"{where}: unknown 'as: {kind}' (known: {list(CONVERTERS)})")
        try:
            table = self.env.terminology.table(spec["map"]) if "map" in spec else None
        except ConfigError as exc:
            raise ConfigError("spec", f"{where}: {exc.issue.message}") from None
        if kind is None and table is None:
            return _shaped(lambda value, label, ctx: value, "identity")

        def leaf(value: str, label: str | None, ctx: Ctx) -> Any:
            out: Any = value
            if kind is not None:
                out = _convert(kind, value, label, ctx)
                if out is _DROPPED:
                    return out
            if table is not None:
                mapped = table.lookup(str(out))
                if mapped is None and not table.has_default:
                    known = ", ".join(sorted(table.mapping))
                    raise MappingError(
                        "unknown-code",
                        f"code {value!r} is not in table {table.name!r} (known: {known})",
                        location=label or ctx.pending_label(),
                    )
                out = mapped
            return out

        return _shaped(leaf, "leaf", kind, table)

    def _missing(self, spec: dict[str, Any], what: str) -> Callable[[Ctx, str], Any]:
        """What an empty path or var gives: its default, an error, or nothing. ``path`` is
        turned into a terser-path label only when the error is raised."""
        default, required, message = spec.get("default"), spec.get("required"), spec.get("message")

        def missing(ctx: Ctx, path: str) -> Any:
            if default is not None:
                return default
            if required:
                label = path if path.startswith("$") else ctx.view.label(path, ctx.here)
                raise MappingError(
                    "required", message or f"{what} is required but empty", location=label
                )
            return None

        return _shaped(missing, "missing", default, required)

    def _path(self, spec: dict[str, Any], where: str) -> Fn:
        alts = [a.strip() for a in str(spec["path"]).split("|")]
        for alt in alts:
            self._check(alt, where)
        many = any("*" in a for a in alts)
        sep = spec.get("sep")
        for alt in alts:
            self._scope.path(alt)
        leaf = self._leaf(spec, where)
        missing = self._missing(spec, " or ".join(alts))
        if not many and len(alts) == 1 and spec.get("as") is None and "map" not in spec:
            # The most common path by far (a field or component as it is): no leaf steps,
            # so no label to keep for their errors.
            alt = alts[0]
            fallback = spec.get("default") is not None or bool(spec.get("required"))

            def plain(ctx: Ctx) -> Any:
                value = ctx.view.first(alt, ctx.here)
                if value is None and fallback:
                    return missing(ctx, alt)
                return value

            return _shaped(plain, "plain", alt, missing, fallback)
        if not many and len(alts) == 1:
            only = alts[0]

            def single(ctx: Ctx) -> Any:
                value = ctx.view.first(only, ctx.here)
                if value is not None:
                    ctx.label_of = only  # for an error raised by the leaf steps
                    out = leaf(value, None, ctx)
                    if out is not _DROPPED:
                        return out
                return missing(ctx, only)

            return _shaped(single, "path", (only,), leaf, missing, True)

        def one(ctx: Ctx) -> Any:
            view, here = ctx.view, ctx.here
            for alt in alts:
                value = view.first(alt, here)
                if value is not None:
                    ctx.label_of = alt  # for an error raised by the leaf steps
                    out = leaf(value, None, ctx)
                    if out is not _DROPPED:
                        return out
            return missing(ctx, alts[0])

        def every(ctx: Ctx) -> Any:
            view, here = ctx.view, ctx.here
            for alt in alts:
                found = view.values(alt, here)
                if found:
                    values = [v for v in (leaf(v, lbl, ctx) for v, lbl in found) if not _empty(v)]
                    if _DROPPED in values:  # malformed values of a lenient field: absent
                        values = [v for v in values if v is not _DROPPED]
                        if not values:
                            continue
                    return sep.join(map(str, values)) if sep is not None else values
            return missing(ctx, alts[0])

        if many:
            return _shaped(every, "every", tuple(alts), leaf, missing, sep)
        return _shaped(one, "path", tuple(alts), leaf, missing, True)

    def _var(self, spec: dict[str, Any], where: str) -> Fn:
        name = str(spec["var"])
        self._scope.vars.add(name)
        leaf = self._leaf(spec, where)
        missing = self._missing(spec, f"${name}")

        def var(ctx: Ctx) -> Any:
            value = ctx.vars.get(name)
            if not value and _empty(value):
                return missing(ctx, f"${name}")
            if not isinstance(value, str):
                return value
            out = leaf(value, f"${name}", ctx)
            return missing(ctx, f"${name}") if out is _DROPPED else out

        return _shaped(var, "var", name, leaf, missing)

    def _const(self, spec: dict[str, Any], where: str) -> Fn:
        return _constant(spec["const"])

    def _ref_key(self, key: str) -> Callable[[Ctx], str]:
        """A literal key is checked at load time; ``$name`` takes the key from a variable."""
        if key.startswith("$"):
            name = key[1:]
            self._scope.ref_vars.add(name)
            return lambda ctx: str(ctx.vars.get(name) or "")
        self._scope.refs.add(key)
        return lambda ctx: key

    def _ref(self, spec: dict[str, Any], where: str) -> Fn:
        raw = str(spec["ref"])
        key = self._ref_key(raw)
        display = self.spec(spec["display"], f"{where}.display") if "display" in spec else None

        def ref(ctx: Ctx) -> Any:
            url = ctx.state.ref(key(ctx))
            out: dict[str, Any] = {"reference": url} if url else {}
            if display is not None:
                shown = display(ctx)
                if not _empty(shown):
                    out["display"] = shown
            return out or None

        # a literal key: generated code asks the Bundle itself (gateway/mapping/_codegen.py)
        return ref if raw.startswith("$") else _shaped(ref, "ref", raw, display)

    def _id_of(self, spec: dict[str, Any], where: str) -> Fn:
        """The id (uuid5) of the resource made under a key: a stable base for identifiers
        of resources that belong to it (a patient's diagnoses)."""
        key = self._ref_key(str(spec["id-of"]))

        def id_of(ctx: Ctx) -> Any:
            url = ctx.state.ref(key(ctx))
            return url.rsplit(":", 1)[-1] if url else None

        raw = str(spec["id-of"])
        return id_of if raw.startswith("$") else _shaped(id_of, "id-of", raw)

    def _refs(self, spec: dict[str, Any], where: str) -> Fn:
        raw = str(spec["refs"])
        key = self._ref_key(raw)

        def refs(ctx: Ctx) -> Any:
            return [{"reference": url} for url in ctx.state.refs(key(ctx))] or None

        return refs if raw.startswith("$") else _shaped(refs, "refs", raw)

    def _first(self, spec: dict[str, Any], where: str) -> Fn:
        if not isinstance(spec["first"], list):
            raise ConfigError("spec", f"{where}: 'first' takes a list of specs")
        fns = [self.spec(s, f"{where}.first[{i}]") for i, s in enumerate(spec["first"])]

        def first(ctx: Ctx) -> Any:
            for fn in fns:
                value = fn(ctx)
                if not _empty(value):
                    return value
            return None

        return _shaped(first, "first", fns)

    def _join(self, spec: dict[str, Any], where: str) -> Fn:
        fns = [self.spec(s, f"{where}.join[{i}]") for i, s in enumerate(spec["join"])]
        sep = str(spec.get("sep", " "))

        def join(ctx: Ctx) -> Any:
            parts: list[Any] = []
            for fn in fns:
                _extend(parts, fn(ctx))
            return sep.join(map(str, parts)) or None

        return _shaped(join, "join", fns, sep)

    def _fn(self, spec: dict[str, Any], where: str) -> Fn:
        name = str(spec["fn"])
        if name not in FUNCTIONS:
            raise ConfigError("spec", f"{where}: unknown function {name!r} ({list(FUNCTIONS)})")
        func = FUNCTIONS[name]
        args = tuple(
            (str(k).replace("-", "_"), self.spec(v, f"{where}.args.{k}"))
            for k, v in (spec.get("args") or {}).items()
        )

        def call(ctx: Ctx) -> Any:
            return func(ctx.env, **{k: fn(ctx) for k, fn in args})

        return _shaped(call, "fn", func, args)

    def _include(self, spec: dict[str, Any], where: str) -> Fn:
        fragment = self.fragment(str(spec["include"]), where)
        return self._positioned(spec, where, fragment)

    def _positioned(self, spec: dict[str, Any], where: str, body: Fn) -> Fn:
        """Run ``body`` at the node ``at`` names (skipped when absent), with ``with`` vars."""
        at = [a.strip() for a in str(spec["at"]).split("|")] if "at" in spec else None
        for alt in at or ():
            self._check(alt, where)
            self._scope.path(alt)
        extra = {
            str(k): self.spec(v, f"{where}.with.{k}") for k, v in (spec.get("with") or {}).items()
        }
        if at is None and not extra:
            return body  # nothing to position: no wrapper call per record

        def positioned(ctx: Ctx) -> Any:
            if at is not None:
                for alt in at:
                    nodes = ctx.view.select(alt, ctx.here)
                    if nodes:
                        ctx = ctx.at(nodes[0])
                        break
                else:
                    return None
            if extra:
                ctx = ctx.with_vars({k: fn(ctx) for k, fn in extra.items()})
            return body(ctx)

        return _shaped(positioned, "at", at, extra, body)

    def _each(self, spec: dict[str, Any], where: str) -> Fn:
        selector = str(spec["each"])
        self._check(selector, where)
        self._scope.path(selector)
        body_spec = (
            spec["do"]
            if "do" in spec
            else {k: v for k, v in spec.items() if k not in ("each", "where", "when")}
        )
        body = self.spec(body_spec, f"{where}.each")
        keep = self.condition(spec["where"], f"{where}.where") if "where" in spec else None

        def each(ctx: Ctx) -> Any:
            out: list[Any] = []
            for pos in ctx.view.select(selector, ctx.here):
                item = ctx.at(pos)
                if keep is None or keep(item):
                    _extend(out, body(item))
            return out or None

        return _shaped(each, "each", selector, keep, body)

    def condition(self, spec: Any, where: str) -> Cond:
        if isinstance(spec, str):
            value = self.spec({"var": spec[1:]} if spec.startswith("$") else {"path": spec}, where)
            return _shaped(lambda ctx: _present(value(ctx)), "present", value)
        if not isinstance(spec, dict):
            raise ConfigError("condition", f"{where}: a condition is a path or a mapping")
        if "not" in spec:
            inner = self.condition(spec["not"], f"{where}.not")
            return _shaped(lambda ctx: not inner(ctx), "not", inner)
        if "all" in spec or "any" in spec:
            combinator = "all" if "all" in spec else "any"
            parts = [self.condition(c, f"{where}.{combinator}") for c in spec[combinator]]
            if combinator == "all":
                return _shaped(lambda ctx: all(p(ctx) for p in parts), "all", parts)
            return _shaped(lambda ctx: any(p(ctx) for p in parts), "any", parts)
        tests = {k: spec[k] for k in ("equals", "in") if k in spec}
        value = self.spec({k: v for k, v in spec.items() if k not in tests}, where)
        if "equals" in tests:
            expected = str(tests["equals"])
            return _shaped(lambda ctx: str(value(ctx) or "") == expected, "equals", value, expected)
        if "in" in tests:
            allowed = {str(x) for x in tests["in"]}
            return _shaped(lambda ctx: str(value(ctx) or "") in allowed, "in", value, allowed)
        return _shaped(lambda ctx: _present(value(ctx)), "present", value)

    # -- message mappings ------------------------------------------------------------------
    def entries(self, entries: list[Any], where: str, defined: list[str]) -> list[Fn]:
        """Compile resource entries; each ref must name a key defined by an earlier entry."""
        out = []
        for i, entry in enumerate(entries):
            here = f"{where}[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError("entry", f"{here}: a resource entry is a mapping")
            if "group" in entry:
                out.append(self._group(entry, here, defined))
            else:
                out.append(self._entry(entry, here, defined))
        return out

    def _group(self, entry: dict[str, Any], where: str, defined: list[str]) -> Fn:
        extra_keys = set(entry) - {
            "group",
            "resources",
            "vars",
            "where",
            "when",
            "export",
            "required",
            "required-at",
        }
        if extra_keys:
            raise ConfigError("entry", f"{where}: {sorted(extra_keys)} not allowed in a group")
        selector = str(entry["group"])
        self._check(selector, where)
        inner = list(defined)
        children = self.entries(list(entry.get("resources") or []), f"{where}.resources", inner)
        export = frozenset(str(k) for k in entry.get("export") or ())
        unknown = export - set(inner)
        if unknown:
            raise ConfigError("entry", f"{where}: exports {sorted(unknown)}, not made in the group")
        defined.extend(sorted(export))
        extra = {
            str(k): self.spec(v, f"{where}.vars.{k}") for k, v in (entry.get("vars") or {}).items()
        }
        keep = self.condition(entry["where"], f"{where}.where") if "where" in entry else None
        cond = self.condition(entry["when"], f"{where}.when") if "when" in entry else None

        required = entry.get("required")
        required_at = str(entry.get("required-at") or selector)

        def group(ctx: Ctx) -> None:
            if cond is not None and not cond(ctx):
                return
            kept = 0
            for pos in ctx.view.select(selector, ctx.here):
                item = ctx.at(pos)
                if keep is not None and not keep(item):
                    continue
                kept += 1
                if extra:
                    item = item.with_vars({k: fn(item) for k, fn in extra.items()})
                ctx.state.push()
                try:
                    for child in children:
                        child(item)
                finally:
                    ctx.state.pop(export)
            if required and not kept:  # none there, or none that 'where' keeps
                raise MappingError("required", str(required), location=required_at)

        return _shaped(
            group, "group", selector, cond, keep, extra, children, export, required, required_at
        )

    def _entry(self, entry: dict[str, Any], where: str, defined: list[str]) -> Fn:
        allowed = {"key", "template", "at", "with", "each", "where", "when", "required"}
        extra = set(entry) - allowed
        if extra or "key" not in entry or "template" not in entry:
            raise ConfigError(
                "entry",
                f"{where}: an entry needs 'key' and 'template' (got {sorted(entry)}); "
                f"allowed keys: {sorted(allowed)}",
            )
        key = str(entry["key"])
        template = self.template(str(entry["template"]), where)
        missing = sorted(template.refs - set(defined) - {key})
        if missing:
            raise ConfigError(
                "entry",
                f"{where}: {template.source} refers to {missing}, which no earlier "
                "entry defines (referenced resources come first)",
            )
        defined.append(key)
        required = entry.get("required")

        def build(ctx: Ctx) -> Any:
            ctx.state.add(key, template, template.fields(ctx) or {}, ctx.here)
            return None

        body = self._positioned(entry, where, _shaped(build, "add", key, template))
        if "each" in entry:
            selector = str(entry["each"])
            self._check(selector, where)
            keep = self.condition(entry["where"], f"{where}.where") if "where" in entry else None

            def each(ctx: Ctx) -> Any:
                for pos in ctx.view.select(selector, ctx.here):
                    item = ctx.at(pos)
                    if keep is None or keep(item):
                        body(item)
                return None

            run: Fn = _shaped(each, "each-entry", selector, keep, body)
        else:
            run = body
        if required:
            inner = run

            def checked(ctx: Ctx) -> Any:
                before = ctx.state.count(key)
                inner(ctx)
                if ctx.state.count(key) == before:
                    raise MappingError("required", str(required), location=entry.get("at"))
                return None

            run = _shaped(checked, "checked", key, str(required), entry.get("at"), inner)
        if "when" in entry:
            cond, unguarded = self.condition(entry["when"], f"{where}.when"), run

            def guarded(ctx: Ctx) -> Any:
                return unguarded(ctx) if cond(ctx) else None

            return _shaped(guarded, "when", cond, unguarded)
        return run
