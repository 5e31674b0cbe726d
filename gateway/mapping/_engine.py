"""Message mappings: pick the mapping for a record's type and run it into a Bundle.

The engine knows no message type: ``mappings/<format>/messages/*.yaml`` each declare
the types they handle (``messages: [REF^I12, REF^I14]``) and list their resources.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..datafiles import load_data_file
from ..errors import ConfigError, Issue, MappingError
from ._bundle import BundleBuilder, fresh_resource_id
from ._ceiling import STATS, TARGETS, Ceiling, Fallback
from ._codegen import Lowering, engine_setting, lowering_for, seq
from ._compile import Compiler, Ctx, Fn
from ._functions import Env
from ._strictness import Leniency, load_leniency

__all__ = ["MappingSet", "MessageMapping"]


@dataclass(frozen=True, slots=True)
class OneIdentity:
    """``one-identity``: the places a record names one thing (its order, its study, its
    patient). At every node of every alternative of ``at``, ``value`` (and ``system``,
    when given: paths relative to the node) make an identifier; one system with two
    values is two things: the mapping reads the first, and the record would be linked to
    one of them only. A node whose ``system`` is empty names nothing (a CDA id without
    its root: an extension is a number only within its root) and is not compared.
    ``of`` (optional, relative to the node) is the element each identifier belongs to:
    one element's identifiers of several systems (an order's placer and filler numbers)
    are one thing's; two elements are one thing only when they share an identifier,
    else the record names things that cannot be told to be one."""

    what: str
    paths: tuple[str, ...]
    value: str
    system: str | None = None
    of: str | None = None

    def check(self, view: Any) -> None:
        seen: dict[str | None, str] = {}
        holders: dict[str, tuple[Any, set[str | None]]] = {}  # element → (a node, systems)
        for path in self.paths:
            for node in view.select(path, view.root):
                value = view.first(self.value, node)
                system = view.first(self.system, node) if self.system else None
                if not value or (self.system and not system):
                    continue  # no identifier there (a nullFlavor), or of no issuer
                if seen.setdefault(system, value) != value:
                    raise MappingError(
                        "conflicting-identifiers",
                        f"the record names more than one {self.what}: the identifiers at "
                        f"{' | '.join(self.paths)} differ; a record is of one {self.what}",
                        location=str(node.label),
                    )
                if self.of:
                    holder = view.select(self.of, node)
                    key = str(holder[0].label) if holder else str(node.label)
                    holders.setdefault(key, (node, set()))[1].add(system)
        self._connected(list(holders.values()))

    def _connected(self, holders: list[tuple[Any, set[str | None]]]) -> None:
        """Every element shares an identifier with the others, through one another (the
        values of a system are one by now, so a system in common is an identifier)."""
        if len(holders) < 2:
            return
        reached, rest = set(holders[0][1]), holders[1:]
        while rest:
            joined = [h for h in rest if h[1] & reached]
            if not joined:
                raise MappingError(
                    "conflicting-identifiers",
                    f"the record names more than one {self.what}: the identifiers at "
                    f"{rest[0][0].label} share no issuer with the record's other "
                    f"{self.what} identifiers, so they cannot be told to be one "
                    f"{self.what} (give its numbers on one element); a record is of one "
                    f"{self.what}",
                    location=str(rest[0][0].label),
                )
            for holder in joined:
                reached |= holder[1]
            rest = [h for h in rest if not h[1] & reached]


@dataclass(frozen=True, slots=True)
class MessageMapping:
    name: str
    types: tuple[str, ...]
    vars: dict[str, Fn]
    entries: list[Fn]
    bundle_identifier: Fn
    bundle_timestamp: Fn
    lenient: Leniency | None = None  # this message type's lenient fields (strict.yaml)
    # ``one-patient``: where the record names its patient; a second one there refuses it
    # (a Bundle is one patient's, and the mapping reads the first)
    one_patient: str | None = None
    # ``other-subject``: where the record's content is said to be about another person
    # than its patient (a CDA section's subject); anything there refuses it, since the
    # content would be filed under the record's patient. (path, why)
    other_subject: tuple[str, str] | None = None
    one_identity: tuple[OneIdentity, ...] = ()
    # The ceiling target's ``build(view, env, tz, lenient)`` for this mapping (see
    # gateway/mapping/_ceiling.py), tried first; None: the units below alone
    build: Callable[..., tuple[dict[str, Any], list[Issue]]] | None = None

    def run(self, view: Any, env: Env, tz: str) -> tuple[dict[str, Any], list[Issue]]:
        if self.one_identity or self.other_subject:
            # A second patient is refused as such before its identifiers can conflict.
            self._check_patients(view)
            for check in self.one_identity:
                check.check(view)
        if self.build is not None:
            try:
                bundle, warnings = self.build(view, env, tz, self.lenient)
            except Fallback as exc:
                STATS["fallback:" + exc.reason] += 1
            except MappingError as exc:  # raised by a unit it calls: its error, again
                STATS["fallback:error:" + exc.code] += 1
            else:
                STATS["built"] += 1
                return bundle, _once(warnings)
        return self._run(view, env, tz)

    def _check_patients(self, view: Any) -> None:
        """A second patient (one-patient), or content about another person (other-subject),
        refuses the record."""
        if self.one_patient is not None:
            found = view.select(self.one_patient, view.root)
            if len(found) > 1:
                raise MappingError(
                    "several-patients",
                    f"the record names {len(found)} patients ({self.one_patient}); a "
                    "record is converted for one patient: send one per message or document",
                    location=str(found[1].label),
                )
        if self.other_subject is not None:
            path, why = self.other_subject
            others = view.select(path, view.root)
            if others:
                raise MappingError(
                    "several-patients",
                    f"{why}; a record is converted for one patient: its content must not "
                    "be filed under the patient's name",
                    location=str(others[0].label),
                )

    def _run(self, view: Any, env: Env, tz: str) -> tuple[dict[str, Any], list[Issue]]:
        self._check_patients(view)
        state = BundleBuilder()
        ctx = Ctx(view, view.root, {}, state, env, tz, "", self.lenient)
        if self.vars:
            ctx = ctx.with_vars({k: fn(ctx) for k, fn in self.vars.items()})
        for entry in self.entries:
            entry(ctx)
        identifier = self.bundle_identifier(ctx)
        if not identifier or not identifier.get("system") or not identifier.get("value"):
            raise MappingError("no-identity", "the record has no identifier for its Bundle")
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            # the record's own message id: never met again, not cached
            "id": fresh_resource_id("Bundle", identifier["system"], identifier["value"]),
            "identifier": identifier,
            "type": "transaction",
        }
        timestamp = self.bundle_timestamp(ctx)
        if timestamp:
            bundle["timestamp"] = timestamp
        bundle["entry"] = state.entries
        return bundle, _once(state.warnings)


class MappingSet:
    """All message mappings of one input format, compiled once."""

    def __init__(
        self,
        root: Path,
        fmt: str,
        env: Env,
        check_path: Callable[[str], None],
        type_field: str = "MSH-9",
        engine: str | None = None,
    ) -> None:
        self.folder = root / fmt
        self.type_field = type_field
        self.env = env
        # compiled (generated Python, gateway/mapping/_codegen.py) or interpreted (the
        # closures, the reference): GATEWAY_MAPPING_ENGINE unless given
        self.engine = (
            engine_setting()
            if engine is None
            else engine_setting({"GATEWAY_MAPPING_ENGINE": engine})
        )
        self._check_path = check_path
        self._compiler = Compiler(self.folder, env, check_path)
        self._lowering: Lowering | None = None
        if self.engine in ("compiled", "ceiling"):
            # the path checker names the view class reading this format (its accessors)
            view = getattr(check_path, "view", None)
            self._lowering = self._compiler.lower = lowering_for(self.folder, view=view)
        self._ceiling: Ceiling | None = None
        if self.engine == "ceiling" and self._lowering is not None and self._lowering.view:
            self._ceiling = Ceiling(self._lowering.view)
        self._by_type: dict[str, MessageMapping] = {}
        for path in sorted((self.folder / "messages").glob("*.yaml")):
            mapping = self._load(path)
            for t in mapping.types:
                if t in self._by_type:
                    raise ConfigError(
                        "duplicate-mapping",
                        f"{path.name}: {t} is already mapped by {self._by_type[t].name}",
                    )
                self._by_type[t] = mapping
        if self._lowering is not None and self._lowering.cache is not None:
            self._lowering.cache.save(self._lowering.sources)
        # Each message type's mapping, bound to its lenient fields (strict.yaml)
        for mtype, lenient in load_leniency(self.folder, self.types).items():
            self._by_type[mtype] = replace(self._by_type[mtype], lenient=lenient)

    @property
    def types(self) -> list[str]:
        return sorted(self._by_type)

    def for_type(self, message_type: str) -> MessageMapping:
        try:
            return self._by_type[message_type]
        except KeyError:
            raise MappingError(
                "unsupported-message",
                f"no mapping for {message_type or '(empty type)'}; "
                f"supported: {', '.join(self.types)}",
                location=self.type_field,
            ) from None

    def _load(self, path: Path) -> MessageMapping:
        raw = load_data_file(path)
        where = path.name
        if not isinstance(raw, dict) or not raw.get("messages") or not raw.get("resources"):
            raise ConfigError("mapping", f"{where}: needs 'messages' and 'resources'")
        compiler = self._compiler
        bundle = raw.get("bundle") or {}
        if "identifier" not in bundle:
            raise ConfigError("mapping", f"{where}: needs bundle.identifier")
        lower = self._lowering or (lambda fn, unit: fn)
        raw_vars = {
            str(k): compiler.spec(v, f"{where}: vars.{k}")
            for k, v in (raw.get("vars") or {}).items()
        }
        variables = {k: lower(fn, f"{where}: vars.{k}") for k, fn in raw_vars.items()}
        entries = compiler.entries(list(raw["resources"]), f"{where}: resources", [])
        closures = seq(entries)
        if self._lowering is not None:  # one function for all resources
            entries = [self._lowering(closures, f"{where}: resources")]
        one_patient = raw.get("one-patient")
        if one_patient is not None:
            try:
                self._check_path(str(one_patient))
            except ConfigError as exc:
                raise ConfigError("mapping", f"{where}: one-patient: {exc.issue.message}") from None
        other_subject = self._other_subject(raw.get("other-subject"), where)
        one_identity = self._one_identity(raw.get("one-identity"), where)
        identifier = compiler.spec(bundle["identifier"], f"{where}: bundle.identifier")
        timestamp = compiler.spec(bundle.get("timestamp"), f"{where}: bundle.timestamp")
        build = None
        if self._ceiling is not None and where in TARGETS:
            build = self._ceiling.build(
                where,
                raw_vars,
                closures,
                identifier,
                timestamp,
                None if one_patient is None else str(one_patient),
            )
        return MessageMapping(
            name=where,
            types=tuple(str(t) for t in raw["messages"]),
            vars=variables,
            entries=entries,
            bundle_identifier=lower(identifier, f"{where}: bundle.identifier"),
            bundle_timestamp=lower(timestamp, f"{where}: bundle.timestamp"),
            one_patient=None if one_patient is None else str(one_patient),
            other_subject=other_subject,
            one_identity=one_identity,
            build=build,
        )

    def _other_subject(self, raw: Any, where: str) -> tuple[str, str] | None:
        """The ``other-subject`` check: ``{at, why}``."""
        if raw is None:
            return None
        if not isinstance(raw, dict) or set(raw) != {"at", "why"}:
            raise ConfigError("mapping", f"{where}: other-subject needs at and why, only")
        try:
            self._check_path(str(raw["at"]))
        except ConfigError as exc:
            raise ConfigError("mapping", f"{where}: other-subject: {exc.issue.message}") from None
        return str(raw["at"]), str(raw["why"])

    def _one_identity(self, raw: Any, where: str) -> tuple[OneIdentity, ...]:
        """The ``one-identity`` checks: ``[{what, at, value, system (optional)}]``."""
        checks = []
        for n, item in enumerate(raw or []):
            try:
                paths = tuple(p.strip() for p in str(item["at"]).split("|"))
                system, of = item.get("system"), item.get("of")
                check = OneIdentity(
                    str(item["what"]),
                    paths,
                    str(item["value"]),
                    system and str(system),
                    of and str(of),
                )
                extra = [p for p in (system, of) if p]
                for path in (*check.paths, check.value, *extra):
                    self._check_path(str(path))
                unknown = set(item) - {"what", "at", "value", "system", "of"}
                if unknown:
                    raise KeyError(", ".join(sorted(unknown)))
            except (KeyError, TypeError, AttributeError) as exc:
                raise ConfigError(
                    "mapping",
                    f"{where}: one-identity[{n}] needs what, at and value, and takes "
                    f"system and of ({exc!r})",
                ) from None
            except ConfigError as exc:
                raise ConfigError(
                    "mapping", f"{where}: one-identity[{n}]: {exc.issue.message}"
                ) from None
            checks.append(check)
        return tuple(checks)


def _once(warnings: list[Issue]) -> list[Issue]:
    """Each warning once: a field read by two elements (RF1-7 gives occurrencePeriod.start
    and is authoredOn's fallback) is dropped, and named, once."""
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for w in warnings:
        key = (w.code, w.location, w.message)
        if key not in seen:
            seen.add(key)
            out.append(w)
    return out
