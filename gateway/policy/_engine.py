"""The decision engine: the rules of ``mappings/policy/rules.yaml`` run over one transfer
(a Bundle, its sender, its recipient, its purpose) and give a :class:`Decision`."""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import uuid
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..audit import join_people
from ..config import Settings
from ..datafiles import FileWatch, data_dir, load_data_file
from ..envelope import dump_json
from ..errors import ConfigError, Issue
from ..network import Institution, Network
from ._consent import (
    PURPOSE_SYSTEM,
    V3_ACT_REASON,
    ConsentRecord,
    MemoryConsents,
    PolicyError,
)
from ._data import LANGS, Agreement, Basis, PolicyData, Profile, Text
from ._key import policy_key
from ._minimise import Change, Minimisation, pseudonym, squeezed, structural_memo

__all__ = [
    "LEGAL_BASIS_SYSTEM",
    "OUTCOMES",
    "Consents",
    "Counters",
    "Decision",
    "MemoryCounters",
    "Policy",
    "RuleResult",
]

LEGAL_BASIS_SYSTEM = "https://fhir-gateway.example.org/CodeSystem/cross-border-legal-basis"
AGREEMENT_BASE = "https://fhir-gateway.example.org/agreement/"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OUTCOMES = ("allow", "allow-with-changes", "hold", "deny")
_NS = uuid.UUID("0b6f3c1e-4d2a-5f8b-a7c9-1e3d5f7a9b2c")
log = logging.getLogger(__name__)
# OperationOutcome issue per rule outcome: (code, severity)
_ISSUES = {
    "deny": ("policy.denied", "error"),
    "hold": ("policy.held", "warning"),
    "warn": ("policy.threshold-warning", "warning"),
    "change": ("policy.changed", "information"),
    "pass": ("policy.passed", "information"),
    "skip": ("policy.not-run", "information"),
}


class Consents(Protocol):
    def for_patients(self, patients: list[str]) -> list[ConsentRecord]: ...


class Counters(Protocol):
    """Individuals counted per year, sender, basis and category. An individual is a
    person, not an identifier: the pseudonyms of one Patient are one individual, and
    sets that share a pseudonym the same one unless that would give one individual two
    different identifiers of one system (docs/policy.md, "Who is an individual")."""

    def count(self, year: int, sender: str, basis: str, category: str) -> int: ...

    def joined(
        self, year: int, sender: str, basis: str, category: str, people: Sequence[Sequence[str]]
    ) -> int:
        """How the count would change were ``people`` (each a Patient's pseudonyms,
        tagged with their systems: :func:`_person_sets`) counted: +1 per new individual,
        -1 per counted individual merged into another (a record naming two identifiers
        counted apart as one person's)."""
        ...

    def shared(self, year: int, sender: str, persons: Sequence[str]) -> set[str]:
        """Which of ``persons`` (tagged pseudonyms) two individuals counted apart hold
        — an identifier several different people share (a placeholder HKID) — in the
        sender's counters of ``year`` and the year before: a consent recorded under it
        names none of them unambiguously (docs/policy.md, "A consent under a shared
        identifier")."""
        ...


class MemoryCounters:
    """Yearly counters in memory (``policy check``, tests): ``people`` holds each
    key's individuals (by id), ``held`` each individual's pseudonyms (tagged:
    ``tag:pseudonym``; an untagged one's system is not known). A pseudonym put in
    ``people`` alone is an individual of its own, holding it."""

    def __init__(self) -> None:
        self.people: dict[tuple[int, str, str, str], set[str]] = {}
        self.held: dict[tuple[int, str, str, str], dict[str, set[str]]] = {}

    def count(self, year: int, sender: str, basis: str, category: str) -> int:
        return len(self.people.get((year, sender, basis, category), ()))

    def _known(self, key: tuple[int, str, str, str]) -> dict[str, set[str]]:
        held = self.held.setdefault(key, {})
        return {i: held.setdefault(i, {i}) for i in self.people.get(key, ())}

    def joined(
        self, year: int, sender: str, basis: str, category: str, people: Sequence[Sequence[str]]
    ) -> int:
        found = join_people(people, self._known((year, sender, basis, category)))
        return sum(1 - len(joined) for _, joined in found)

    def has(self, year: int, sender: str, basis: str, category: str, person: str) -> bool:
        known = self._known((year, sender, basis, category)).values()
        return any(person in held for held in known)

    def shared(self, year: int, sender: str, persons: Sequence[str]) -> set[str]:
        wanted, found = set(persons), set()
        for key in list(self.people):
            if key[1] != sender or key[0] not in (year - 1, year):
                continue
            holders: dict[str, int] = {}
            for held in self._known(key).values():
                for person in held & wanted:
                    holders[person] = holders.get(person, 0) + 1
            found |= {p for p, n in holders.items() if n > 1}
        return found

    def add(self, year: int, sender: str, basis: str, category: str, *person: str) -> int:
        """Count one individual by their pseudonyms (joining those counted already when
        no conflict forbids it); the number of individuals counted apart it merged."""
        key = (year, sender, basis, category)
        known = self._known(key)
        individuals = self.people.setdefault(key, set())
        merged = 0
        for fresh, joined in join_people([person], known):
            individual = joined[0] if joined else new_individual(fresh, known)
            held = known.setdefault(individual, set())
            for other in joined[1:]:  # merged into the first
                held |= known[other]
                individuals.discard(other)
                merged += 1
            held.update(fresh)
            individuals.add(individual)
        self.held[key] = {i: known[i] for i in individuals}
        return merged


@dataclass(frozen=True, slots=True)
class RuleResult:
    rule: str
    kind: str
    outcome: str  # pass, warn, change, hold, deny, skip
    reason_code: str
    reason: Text

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "kind": self.kind,
            "outcome": self.outcome,
            "reason_code": self.reason_code,
            "reason": self.reason,
        }


@dataclass
class Decision:
    outcome: str  # allow, allow-with-changes, hold, deny
    sender: str  # institution keys
    recipient: str
    purpose: str
    decided_at: datetime
    results: list[RuleResult]
    basis: str | None = None
    agreement: str | None = None
    changes: list[Change] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)  # pseudonyms of the patient's ids
    # the counter rows (one per individual), once sent
    counts: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    # Pseudonyms of every individual of the record (each Patient: entries, contained,
    # nested, in Parameters), each of their identifiers once: the audit event names all.
    individuals: list[str] = field(default_factory=list)
    # The same by person: each Patient's pseudonyms (one set per Patient), what the
    # counters and the transfer report count individuals by (kept with the decision).
    people: list[list[str]] = field(default_factory=list)
    consents: list[str] = field(default_factory=list)  # Consent.ids the transfer rests on
    cross_border: bool = False  # between jurisdictions (its audit event must be kept)
    # (type, value) pairs the caller adds to the decision's audit event (a resend's
    # action and which parts went): codes, never patient data
    notes: list[tuple[str, str]] = field(default_factory=list)
    id: int | None = None  # the stored decision's id
    message_id: int | None = None
    _json: bytes | None = field(default=None, repr=False)  # what leaves, serialised
    _bundle: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def allowed(self) -> bool:
        return self.outcome in ("allow", "allow-with-changes")

    @property
    def count(self) -> tuple[int, str, str, str, str] | None:
        """The first individual's counter row (a record of one patient has one)."""
        return self.counts[0] if self.counts else None

    @property
    def bundle_json(self) -> bytes | None:
        """What leaves (minimised and labelled), serialised: None unless allowed."""
        return self._json

    @property
    def bundle(self) -> dict[str, Any] | None:
        """What leaves as a Bundle of the caller's own, parsed from ``bundle_json`` on
        first use (the stage itself only makes the bytes)."""
        if self._bundle is None and self._json is not None:
            self._bundle = orjson.loads(self._json)
        return self._bundle

    def issues(self) -> list[Issue]:
        out = []
        for r in self.results:
            code, severity = _ISSUES[r.outcome]
            out.append(
                Issue(
                    code,
                    r.reason["en"],
                    location=f"policy.{r.rule}",
                    severity=severity,
                    details={"issue_type": _issue_type(r.outcome)},
                )
            )
        return out

    def operation_outcome(self) -> dict[str, Any]:
        """What the sender gets: one issue per rule, its reason in zh-Hans (text) with
        zh-Hant-HK and en translations, and in English as diagnostics. The labels' zh-Hant
        is tagged zh-Hant-HK, the gateway's one Traditional tag (docs/terminology.md)."""
        issues = []
        for r, issue in zip(self.results, self.issues(), strict=True):
            fhir = issue.to_fhir()
            fhir["details"]["text"] = r.reason["zh-Hans"]
            fhir["details"]["_text"] = {
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/translation",
                        "extension": [
                            {"url": "lang", "valueCode": tag},
                            {"url": "content", "valueString": r.reason[lang]},
                        ],
                    }
                    for lang, tag in (("zh-Hant", "zh-Hant-HK"), ("en", "en"))
                ]
            }
            issues.append(fhir)
        return {"resourceType": "OperationOutcome", "issue": issues}

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "outcome": self.outcome,
            "sender": self.sender,
            "recipient": self.recipient,
            "purpose": self.purpose,
            "basis": self.basis,
            "agreement": self.agreement,
            "decided_at": self.decided_at.isoformat() + "Z",
            "rules": [r.to_json() for r in self.results],
            "changes": [c.to_json() for c in self.changes],
            "consents": list(self.consents),
        }


@dataclass(slots=True)
class _Transfer:
    """What the rules look at."""

    sender: Institution
    recipient: Institution
    purpose: str
    now: datetime
    from_j: str
    to_j: str
    bundle: dict[str, Any]  # read, never changed (it may be the converter's)
    text: bytes | None  # the Bundle as canonical JSON (orjson's), when at hand
    patients: list[str]
    categories: list[str]
    consents: Consents
    counters: Counters
    agreement: Agreement | None = None
    counts: list[tuple[int, str, str, str, str]] = field(default_factory=list)
    found_people: list[tuple[str, ...]] | None = None  # people(), made once
    consent_ids: list[str] = field(default_factory=list)  # the consents that cover it
    changes: list[Change] = field(default_factory=list)
    minimised: Minimisation | None = None
    minimise_rule: tuple[str, str] | None = None  # (rule id, profile id) when it changed
    early: Minimisation | None = None  # pass 1, made once (_structural)
    key: Callable[[], bytes] = bytes  # the pseudonym key, read on first use
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # the Policy's memo
    plan: _Plan | None = None  # the rules folded for its parties and purpose
    basis: str | None = None  # a basis a rule records without an agreement (a status reply)

    @property
    def cross_border(self) -> bool:
        return self.from_j != self.to_j

    def people(self) -> list[tuple[str, ...]]:
        """Each individual of the record (a Patient, contained ones too) by their
        identifiers: each needs a consent of their own. Asked only when consent is."""
        if self.found_people is None:
            self.found_people = _people(self.bundle, [])
        return self.found_people

    def json(self) -> bytes:
        """The Bundle as canonical JSON (the prohibited-code search), made once."""
        if self.text is None:
            self.text = orjson.dumps(self.bundle)
        return self.text

    def alias(self, system: str, value: str) -> str:
        """The pseudonym of an identifier, computed once per decision (the minimisation,
        the decision's patients and the volume counter each need it)."""
        found = self.aliases.get((system, value))
        if found is None:
            if len(self.aliases) > 65536:  # a bound: one per identifier seen
                self.aliases.clear()
            found = self.aliases[(system, value)] = pseudonym(self.key(), system, value)
        return found


Rule = Callable[["Policy", _Transfer, str, dict[str, Any]], RuleResult]


@dataclass(frozen=True, slots=True)
class _Step:
    """One rule of a plan: ``fixed`` when its result depends on the parties and purpose
    alone (no prohibited-code search outside the exporting jurisdictions, no consent
    required, no counting outside them): then the rule is not run per decision."""

    rule_id: str
    kind: str
    rule: Rule
    params: dict[str, Any]
    fixed: RuleResult | None
    skipped: RuleResult  # what a minimisation not run (held, refused) says


@dataclass(frozen=True, slots=True)
class _Plan:
    """The rules folded for one (sender, recipient, purpose), built once and kept per
    Policy: the parties resolved, their jurisdictions, the minimisation profile, and
    each rule's result when it does not depend on the record. Nothing in it depends on
    a consent or a counter (asked at every decision), and a Policy's agreements and
    rules are its ``data``: a new ``data`` drops every plan (:meth:`Policy.invalidate`)."""

    source: Institution
    target: Institution
    purpose: str
    from_j: str
    to_j: str
    profile: Profile | None
    steps: tuple[_Step, ...]


def _copy(r: RuleResult) -> RuleResult:
    """A result of one's own (a caller may change its reason)."""
    return RuleResult(r.rule, r.kind, r.outcome, r.reason_code, dict(r.reason))


class Policy:
    """The rules, agreements and labels, loaded once; :meth:`decide` is thread-safe."""

    def __init__(
        self,
        settings: Settings,
        network: Network | None = None,
        data: PolicyData | None = None,
        key: bytes | None = None,
    ) -> None:
        self.settings = settings
        self.network = network or Network.load(settings.network)
        policy_dir = settings.policy_dir or data_dir("mappings") / "policy"
        agreements = settings.policy_agreements or data_dir("seeds") / "agreements.yaml"
        self._load_data = functools.partial(
            PolicyData.load,
            policy_dir,
            agreements,
            (settings.policy_volume_limit, settings.policy_volume_warning),
        )
        self.data = data or self._load_data()
        self.data.check_parties(self.network)
        # The files read, watched while running: an agreement ended, a rule changed or
        # an institution's place in the network is read at the next decision after
        # ``reload_interval`` seconds, without a restart (a Policy given its ``data``
        # watches only the network it was given, when that came from a file).
        self._own_data = data is None
        self._sources: tuple[Path, ...] = ()
        if data is None:
            self._sources = (agreements, *(policy_dir / f for f in _POLICY_FILES))
        if self.network.source is not None:
            self._sources += (self.network.source,)
        self.watch = FileWatch(self._sources)
        self._broken: ConfigError | None = None  # the files as changed do not load
        self._reload_lock = threading.Lock()
        self._institutions = _institutions(self.network, settings.network)
        self._names: dict[tuple[str, str, str], dict[str, Any]] = {}  # rule words per transfer
        # Results that depend only on the transfer's parties, purpose, categories and day
        # (never on the patient): computed once per process. The data is read once; a
        # new PolicyData means a new Policy (the caches are tied to this one's).
        self._results: dict[tuple[Any, ...], tuple[RuleResult, Agreement | None]] = {}
        self._national = frozenset(s for p in self.data.profiles for s in p.pseudonymise)
        self._needles = _needle_regex(code.split("|", 1)[1] for code in self.data.codes)
        self._aliases: dict[tuple[str, str], str] = {}  # pseudonyms (the key never changes)
        self._passes: dict[tuple[Any, ...], Any] = {}  # pass 1 per patient (structural_memo)
        self._squeezed_needles = _squeezed_regex(c.split("|", 1)[1] for c in self.data.codes)
        self._provenances: dict[tuple[Any, ...], dict[str, Any]] = {}  # fixed parts
        self._label_sets: dict[tuple[Any, ...], list[dict[str, str]]] = {}  # _labels
        self._key = key
        self._key_lock = threading.Lock()
        self._plans: dict[tuple[str, str, str], _Plan] = {}
        self._load_rules()

    def invalidate(self) -> None:
        """Forget every plan and every result derived from the data: after the
        agreements or rules changed (a new ``data``; :meth:`decide` notices one itself).
        Consents and counters need none of this: they are asked at every decision."""
        self._plans = {}
        self._results.clear()
        # Pass 1 per patient is keyed by the profile's id, not its rules: a profile
        # edited under the same id (addresses now removed) must not replay the old one.
        self._passes.clear()
        self._names.clear()
        self._provenances.clear()
        self._label_sets.clear()
        self._national = frozenset(s for p in self.data.profiles for s in p.pseudonymise)
        self._needles = _needle_regex(code.split("|", 1)[1] for code in self.data.codes)
        self._squeezed_needles = _squeezed_regex(c.split("|", 1)[1] for c in self.data.codes)
        self._load_rules()

    def _load_rules(self) -> None:
        self._planned_for: PolicyData | None = self.data
        self._rules: list[tuple[str, str, Rule, dict[str, Any]]] = []
        for spec in self.data.rules:
            kind = str(spec["kind"])
            if kind not in RULES:
                raise ConfigError(
                    "policy",
                    f"rules.yaml: rule {spec['id']}: unknown kind {kind!r} ({', '.join(RULES)})",
                )
            self._rules.append((str(spec["id"]), kind, RULES[kind], dict(spec.get("params") or {})))

    @property
    def key(self) -> bytes:
        with self._key_lock:
            if self._key is None:
                self._key = policy_key(self.settings)
            return self._key

    # -- words ------------------------------------------------------------------------
    def say(self, reason: str, **params: Any) -> Text:
        templates = self.data.labels["reasons"][reason]
        return {
            lang: str(templates[lang]).format(
                **{k: (v[lang] if isinstance(v, dict) else v) for k, v in params.items()}
            )
            for lang in LANGS
        }

    def label(self, group: str, key: str) -> Text:
        found = (self.data.labels.get(group) or {}).get(key)
        return dict(found) if found else {lang: key for lang in LANGS}

    def name(self, inst: Institution) -> Text:
        return {lang: inst.name(lang) or inst.key for lang in LANGS}

    def purpose_name(self, purpose: str) -> Text:
        spec = self.data.purposes.get(purpose) or {}
        return {lang: str(spec.get(lang, purpose)) for lang in LANGS}

    # -- deciding ---------------------------------------------------------------------
    def institution(self, name: str, role: str) -> Institution:
        inst = self.network.find(name)
        if inst is None:
            code = "unknown-partner" if role == "recipient" else "unknown-sender"
            raise ConfigError(code, f"the {role} {name!r} is not an institution of the network")
        return inst

    def sender_of(self, bundle: bytes | dict[str, Any]) -> str | None:
        """The sender a Bundle names: the institution whose identifier-system base its
        Bundle.identifier uses (``https://fhir.nsch.example.cn/sid/hl7v2-message``)."""
        system = str((_bundle(bundle).get("identifier") or {}).get("system") or "")
        for inst in self._institutions:
            if system.startswith(inst.base + "/"):
                return inst.key
        return None

    def purpose_of(self, bundle: dict[str, Any]) -> str:
        return self._purpose_for(
            {(e.get("resource") or {}).get("resourceType") for e in bundle.get("entry") or []}
        )

    def _purpose_for(self, types: set[Any]) -> str:
        for resource_type, purpose in self.data.default_purpose.items():
            if resource_type in types:
                return purpose
        return self.data.default_purpose.get("*", "continuing-care")

    def decide(
        self,
        bundle: bytes | dict[str, Any],
        sender: str,
        recipient: str,
        purpose: str | None = None,
        *,
        consents: Consents | None = None,
        counters: Counters | None = None,
        now: datetime | None = None,
        text: bytes | None = None,
    ) -> Decision:
        """Decide one transfer. ``bundle`` is the converted Bundle: JSON bytes, or a dict
        that is only read, never changed — the converter's own (``Record.mapped``, frozen
        parts shared with other records) saves parsing the JSON again; ``text``: that
        dict's JSON when the caller has it (``Record.bundle_json``). The decision's
        ``bundle_json`` is what may leave (minimised, labelled, with a Provenance), None
        unless allowed. Nothing is stored or counted here."""
        if self._sources:
            self._fresh()
        parsed, text = _parse(bundle, text)
        types, patients, categories = self._scan(parsed)
        plan = self._plan(sender, recipient, purpose or self._purpose_for(types))
        now = now or datetime.now(UTC).replace(tzinfo=None)
        t = _Transfer(
            sender=plan.source,
            recipient=plan.target,
            purpose=plan.purpose,
            now=now,
            from_j=plan.from_j,
            to_j=plan.to_j,
            bundle=parsed,
            text=text,
            patients=patients,
            categories=categories,
            consents=consents or MemoryConsents(),
            counters=counters or MemoryCounters(),
            key=lambda: self.key,
            aliases=self._aliases,
            plan=plan,
        )
        results: list[RuleResult] = []
        stopped = False
        for step in plan.steps:
            if stopped and step.kind == "minimise":
                results.append(_copy(step.skipped))
                continue
            if step.fixed is not None:
                result = _copy(step.fixed)
            else:
                result = step.rule(self, t, step.rule_id, step.params)
            results.append(result)
            stopped = stopped or result.outcome in ("deny", "hold")
        decision = Decision(
            outcome=_outcome(results, t.changes),
            sender=plan.source.key,
            recipient=plan.target.key,
            purpose=plan.purpose,
            decided_at=now,
            results=results,
            basis=t.agreement.basis if t.agreement else None,
            agreement=t.agreement.id if t.agreement else None,
            changes=t.changes,
            patients=[t.alias(*p.split("|", 1)) for p in t.patients],
            consents=t.consent_ids,
            cross_border=t.cross_border,
        )
        decision.individuals = _individuals(t, decision.patients)
        decision.people = [list(p) for p in _person_sets(t)]
        if decision.allowed:
            decision._json = self._leave(t, decision)
            decision.counts = t.counts
        return decision

    def crosses(self, sender: str, recipient: str) -> bool:
        """Whether a transfer from ``sender`` to ``recipient`` leaves a jurisdiction."""
        if self._sources:
            self._fresh()
        source = self.institution(sender, "sender")
        target = self.institution(recipient, "recipient")
        return self.data.jurisdiction(source) != self.data.jurisdiction(target)

    def decide_status(
        self, bundle: dict[str, Any], sender: str, recipient: str, *, now: datetime | None = None
    ) -> Decision:
        """Decide a referral's status reply (gateway/inbound: a Task back to the gateway
        that sent the referral) by ``status_rules`` of rules.yaml, for the purpose
        ``status_purpose``. It has no Patient entry: its individual is the patient its
        Tasks name in ``for`` by identifier (what the transfer report counts). What
        leaves is the reply as made (``bundle_json`` stays None: nothing is minimised
        or labelled). No ``status_rules`` written: held, never sent undecided."""
        if self._sources:
            self._fresh()
        data = self.data
        source = self.institution(sender, "sender")
        target = self.institution(recipient, "recipient")
        now = now or datetime.now(UTC).replace(tzinfo=None)
        _, _, categories = self._scan(bundle)
        named = _task_patients(bundle)
        t = _Transfer(
            sender=source,
            recipient=target,
            purpose=data.status_purpose,
            now=now,
            from_j=data.jurisdiction(source),
            to_j=data.jurisdiction(target),
            bundle=bundle,
            text=None,
            patients=list(dict.fromkeys(i for ids in named for i in ids)),
            categories=categories,
            consents=MemoryConsents(),
            counters=MemoryCounters(),
            key=lambda: self.key,
            aliases=self._aliases,
            found_people=named,
        )
        results: list[RuleResult] = []
        if data.status_rules is None:
            words = self.say("status.no-rules")
            results.append(RuleResult("status_rules", "status", "hold", "status.no-rules", words))
        for spec in data.status_rules or []:
            kind, rule_id = str(spec["kind"]), str(spec["id"])
            result = RULES[kind](self, t, rule_id, dict(spec.get("params") or {}))
            results.append(result)
            if result.outcome in ("deny", "hold"):
                break
        outcome = _outcome(results, [])
        decision = Decision(
            outcome=outcome,
            sender=source.key,
            recipient=target.key,
            purpose=t.purpose,
            decided_at=now,
            results=results,
            basis=(t.agreement.basis if t.agreement else t.basis) if outcome == "allow" else None,
            agreement=t.agreement.id if t.agreement and outcome == "allow" else None,
            patients=[t.alias(*p.split("|", 1)) for p in t.patients],
            cross_border=t.cross_border,
        )
        decision.individuals = _individuals(t, decision.patients)
        decision.people = [list(p) for p in _person_sets(t)]
        return decision

    def status_labels(self, decision: Decision) -> list[dict[str, str]]:
        """The security labels an allowed status reply's Tasks carry, as an allowed
        record's resources do: its legal basis and purpose of use (what the delivery's
        audit event, and so the transfer report's ``delivered``, reads the basis from)."""
        return [
            {
                "system": LEGAL_BASIS_SYSTEM,
                "code": str(decision.basis),
                "display": self.label("bases", str(decision.basis))["en"],
            },
            {
                "system": V3_ACT_REASON,
                "code": str(self.data.purposes[decision.purpose].get("v3", "TREAT")),
            },
        ]

    def _fresh(self) -> None:
        """Read the data files again when they changed (looked at every
        ``reload_interval`` seconds). Files that no longer load stop every decision
        (``config.policy``, naming the file) until they are mended: never a decision on
        the rules as they were before the edit, nor on a file half read."""
        with self._reload_lock:
            if self.watch.changed():
                self._reload()
        if self._broken is not None:
            raise self._broken

    def _reload(self) -> None:
        """Read the data files and the network again, all or nothing."""
        load_data_file.cache_clear()  # cached by path: the files changed under it
        try:
            source = self.network.source
            network = Network.load(source) if source is not None else self.network
            data = self._load_data() if self._own_data else self.data
            data.check_parties(network)
            institutions = _institutions(network, source or self.settings.network)
        except ConfigError as exc:
            log.error("policy data changed and does not load: %s", exc)
            self._broken = exc
            return
        self._broken = None
        # Plans hold the parties as the network gave them: the next _plan drops them all
        # (a new data, or the same data with _planned_for forgotten).
        self.network, self._institutions = network, institutions
        self.data = data
        self._planned_for = None
        log.info("policy data changed: read again")

    def _plan(self, sender: str, recipient: str, purpose: str) -> _Plan:
        """The plan for these parties and purpose, built on first use (the parties and
        the purpose checked then: an unknown one is never kept)."""
        if self._planned_for is not self.data:  # new agreements or rules
            self.invalidate()
        plans = self._plans
        found = plans.get((sender, recipient, purpose))
        if found is None:
            found = self._make_plan(sender, recipient, purpose)
            if len(plans) > 4096:  # one per parties and purpose: a bound
                plans.clear()
            plans[(sender, recipient, purpose)] = found
        return found

    def _make_plan(self, sender: str, recipient: str, purpose: str) -> _Plan:
        source = self.institution(sender, "sender")
        target = self.institution(recipient, "recipient")
        if purpose not in self.data.purposes:
            raise PolicyError(
                "unknown-purpose",
                f"unknown purpose {purpose!r} (one of {', '.join(self.data.purposes)})",
                location="purpose",
            )
        # A transfer of no record: what the fixed results read (parties, purpose, places).
        t = _Transfer(
            sender=source,
            recipient=target,
            purpose=purpose,
            now=datetime(2000, 1, 1),
            from_j=self.data.jurisdiction(source),
            to_j=self.data.jurisdiction(target),
            bundle={},
            text=None,
            patients=[],
            categories=[],
            consents=MemoryConsents(),
            counters=MemoryCounters(),
        )
        skipped = self.say("skipped")
        steps = tuple(
            _Step(
                rule_id,
                kind,
                rule,
                params,
                _fixed(self, t, kind, rule_id, params),
                RuleResult(rule_id, kind, "skip", "skipped", skipped),
            )
            for rule_id, kind, rule, params in self._rules
        )
        profile = _profile(self, t)
        return _Plan(source, target, purpose, t.from_j, t.to_j, profile, steps)

    def _leave(self, t: _Transfer, decision: Decision) -> bytes:
        """What leaves, serialised once: the minimised Bundle labelled. Pass 2 of the
        minimisation (original values left in any string, attachments) runs only when
        one search of the minimised Bundle's compact JSON finds something; then the
        Bundle is labelled and serialised again, with what pass 2 changed. (That JSON,
        not the bytes that leave: a third of their size — no indentation, no labels —
        so one more orjson call costs less than scanning the indented form.)"""
        done = t.minimised
        data = dump_json(self._label(done.bundle if done else t.bundle, t, decision))
        if done is None:
            return data
        compact, squeezed_compact = done.searched()
        if done.clean(compact, squeezed_compact):
            return data
        strings = done.rewrite is not None and done.rewrite.present(compact, squeezed_compact)
        done.finish(strings, compact)
        if t.minimise_rule is not None:
            rule_id, profile = t.minimise_rule
            n = next(i for i, r in enumerate(decision.results) if r.rule == rule_id)
            decision.results[n] = _minimised(self, rule_id, profile, done.changes)
        decision.outcome = _outcome(decision.results, done.changes)
        return dump_json(self._label(done.bundle, t, decision))

    def _scan(self, bundle: dict[str, Any]) -> tuple[set[Any], list[str], list[str]]:
        """One pass over the entries: their resource types (the default purpose), the
        patients' identifiers (``system|value``: consent, counters) and the data
        categories (the agreement)."""
        types: set[Any] = set()
        patients: dict[str, None] = {}
        categories: dict[str, None] = {}
        table = self.data.categories
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            resource_type = resource.get("resourceType")
            types.add(resource_type)
            category = table[resource_type] if resource_type in table else table.get("*")
            if category:
                categories[category] = None
            if resource_type == "Patient":
                _identifiers(resource, patients)
        return types, list(patients), list(categories)

    def _cached(
        self, key: tuple[Any, ...], make: Callable[[], tuple[RuleResult, Agreement | None]]
    ) -> tuple[RuleResult, Agreement | None]:
        """A rule's result for a key naming everything it depends on; a copy of its
        reason each time (a caller may change what it gets)."""
        found = self._results.get(key)
        if found is None:
            if len(self._results) > 4096:  # one per parties, purpose and day: a bound
                self._results.clear()
            found = self._results[key] = make()
        r, agreement = found
        return RuleResult(r.rule, r.kind, r.outcome, r.reason_code, dict(r.reason)), agreement

    def _label(self, bundle: dict[str, Any], t: _Transfer, decision: Decision) -> dict[str, Any]:
        """The basis on every resource (meta.security) and a Provenance naming the
        agreement (policy). ``bundle`` is only read: what changes is copied (the Bundle,
        its entry list, each entry, resource and meta; the resources' other parts are
        shared, and only serialised). A resource without meta gets one meta shared by
        all of them (the labelled Bundle is only serialised, never handed out)."""
        labels = self._labels(t, decision)
        bare = {"security": labels}
        entries = []
        targets = []
        for entry in bundle.get("entry") or []:
            if isinstance(entry, dict):
                resource = entry.get("resource")
                if isinstance(resource, dict):
                    meta = resource.get("meta")
                    if meta:
                        meta = {**meta, "security": [*(meta.get("security") or []), *labels]}
                    entry = {**entry, "resource": {**resource, "meta": meta or bare}}
                url = entry.get("fullUrl")
                if url:
                    targets.append({"reference": url})
            entries.append(entry)
        out = {**bundle, "entry": entries}
        if targets:
            entries.append(self._provenance(out, t, decision, targets, labels))
        return out

    def _labels(self, t: _Transfer, decision: Decision) -> list[dict[str, str]]:
        """The security labels of every resource that leaves: made once per basis,
        purpose and kind of change (shared between decisions: they are only
        serialised)."""
        basis = decision.basis or "domestic"
        pseud = any(c.action == "pseudonymised" for c in decision.changes)
        key = (basis, t.purpose, pseud, bool(decision.changes))
        labels = self._label_sets.get(key)
        if labels is None:
            labels = [
                {
                    "system": LEGAL_BASIS_SYSTEM,
                    "code": basis,
                    "display": self.label("bases", basis)["en"],
                },
                {"system": V3_ACT_REASON, "code": self.data.purposes[t.purpose].get("v3", "TREAT")},
            ]
            if pseud:
                labels.append({"system": V3_ACT_CODE, "code": "PSEUD", "display": "pseudonymize"})
            if decision.changes:
                labels.append(
                    {"system": V3_ACT_CODE, "code": "MINEC", "display": "minimum necessary"}
                )
            self._label_sets[key] = labels  # bounded: bases x purposes x 4
        return labels

    def _provenance(
        self,
        bundle: dict[str, Any],
        t: _Transfer,
        decision: Decision,
        targets: list[Any],
        labels: list[dict[str, str]],
    ) -> dict[str, Any]:
        ident = _uuid5(f"{bundle.get('id')}|{decision.agreement}|{t.recipient.key}")
        key = (t.sender.key, decision.agreement, decision.basis, t.purpose)
        fixed = self._provenances.get(key)
        if fixed is None:
            if len(self._provenances) > 4096:  # one per parties, agreement and purpose
                self._provenances.clear()
            fixed = self._provenances[key] = self._provenance_parts(t, decision)
        return {
            "fullUrl": f"urn:uuid:{ident}",
            "resource": {
                "resourceType": "Provenance",
                "id": ident,
                "target": targets,
                "recorded": t.now.isoformat(timespec="seconds") + "Z",
                **fixed,
                "meta": {"security": labels},
            },
            "request": {"method": "PUT", "url": f"Provenance/{ident}"},
        }

    def _provenance_parts(self, t: _Transfer, decision: Decision) -> dict[str, Any]:
        """The parts of a Provenance fixed by sender, agreement, basis and purpose
        (shared between decisions: they are only serialised)."""
        policies = [f"{LEGAL_BASIS_SYSTEM}#{decision.basis or 'domestic'}"]
        if decision.agreement:
            policies.insert(0, AGREEMENT_BASE + decision.agreement)
        who: dict[str, Any] = {"display": t.sender.name("en") or t.sender.key}
        if t.sender.oid:
            who["identifier"] = {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{t.sender.oid}"}
        purpose = self.data.purposes[t.purpose]
        return {
            "policy": policies,
            "reason": [
                {
                    "coding": [
                        {"system": PURPOSE_SYSTEM, "code": t.purpose, "display": purpose["en"]},
                        {"system": V3_ACT_REASON, "code": purpose.get("v3", "TREAT")},
                    ]
                }
            ],
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle",
                        "code": "transmit",
                    }
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "custodian",
                            }
                        ]
                    },
                    "who": who,
                }
            ],
        }


_NS_BYTES = _NS.bytes
_POLICY_FILES = ("rules.yaml", "minimisation.yaml", "prohibited.yaml", "labels.yaml")


def _institutions(network: Network, path: Path) -> list[Institution]:
    """The network's institutions in the file's order (``sender_of`` tries them so)."""
    return [
        inst
        for entry in (load_data_file(path) or {}).get("institutions") or []
        if (inst := network.find(str(entry.get("key")))) is not None
    ]


def _people(bundle: dict[str, Any], out: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The Patients of a Bundle's entries, of their contained resources and of Bundles
    nested in an entry, each by its identifiers (added to ``out``)."""
    for entry in bundle.get("entry") or []:
        resource = (entry.get("resource") if isinstance(entry, dict) else None) or {}
        kind = resource.get("resourceType")
        if kind == "Patient":
            out.append(_identifiers(resource, {}))
        elif kind == "Bundle":
            _people(resource, out)
        elif kind == "Parameters":  # a Patient carried as a parameter is an individual too
            for inner in _parameter_resources(resource):
                if inner.get("resourceType") == "Patient":
                    out.append(_identifiers(inner, {}))
                elif inner.get("resourceType") == "Bundle":
                    _people(inner, out)
        for inner in resource.get("contained") or ():
            if isinstance(inner, dict) and inner.get("resourceType") == "Patient":
                out.append(_identifiers(inner, {}))
    return out


def _nested(bundle: dict[str, Any], resources: frozenset[str]) -> list[str]:
    """The types of ``resources`` a Bundle nested in an entry holds (pass 1 of the
    minimisation changes entries and their contained resources, not nested Bundles)."""
    found: list[str] = []
    for entry in bundle.get("entry") or []:
        resource = (entry.get("resource") if isinstance(entry, dict) else None) or {}
        kind = resource.get("resourceType")
        if kind == "Bundle":
            nested = [resource]
        elif kind == "Parameters":  # its Patients pass 1 reaches; a Bundle in it, not
            nested = [
                r for r in _parameter_resources(resource) if r.get("resourceType") == "Bundle"
            ]
        else:
            continue
        for inner in (k for b in nested for k in _people_like(b, resources)):
            if inner not in found:
                found.append(inner)
    return found


def _parameter_resources(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources a Parameters carries, in document order: in its parameters, their
    parts and the Parameters inside them, at any depth."""
    out: list[dict[str, Any]] = []

    def walk(params: Any) -> None:
        for param in params if isinstance(params, list) else ():
            if not isinstance(param, dict):
                continue
            inner = param.get("resource")
            if isinstance(inner, dict):
                out.append(inner)
                if inner.get("resourceType") == "Parameters":
                    walk(inner.get("parameter"))
            walk(param.get("part"))

    walk(resource.get("parameter"))
    return out


def _people_like(bundle: dict[str, Any], resources: frozenset[str]) -> list[str]:
    out = []
    for entry in bundle.get("entry") or []:
        resource = (entry.get("resource") if isinstance(entry, dict) else None) or {}
        kind = resource.get("resourceType")
        if kind in resources:
            out.append(str(kind))
        elif kind == "Bundle":
            out.extend(_people_like(resource, resources))
        out.extend(
            str(c["resourceType"])
            for c in resource.get("contained") or ()
            if isinstance(c, dict) and c.get("resourceType") in resources
        )
    return out


def _identifiers(resource: dict[str, Any], into: dict[str, None]) -> tuple[str, ...]:
    """A Patient's identifiers (``system|value``), also added to ``into``."""
    found = []
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            key = f"{ident['system']}|{ident['value']}"
            into[key] = None
            found.append(key)
    return tuple(found)


def _uuid5(name: str) -> str:
    """``str(uuid.uuid5(_NS, name))`` without the UUID object (a Provenance per decision)."""
    digest = bytearray(hashlib.sha1(_NS_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _outcome(results: list[RuleResult], changes: list[Change]) -> str:
    outcomes = {r.outcome for r in results}
    if "deny" in outcomes:
        return "deny"
    if "hold" in outcomes:
        return "hold"
    return "allow-with-changes" if changes else "allow"


def _issue_type(outcome: str) -> str:
    return {"deny": "forbidden", "hold": "business-rule", "warn": "business-rule"}.get(
        outcome, "informational"
    )


def _needle_regex(codes: Iterable[str]) -> re.Pattern[bytes] | None:
    """One search for every prohibited code as the value of a ``code`` element in
    canonical JSON (``"code": "51969-4"``): a superset of what :func:`_find_code` finds
    (a code counts only in a Coding), anchored on the element's name so that the scan
    stops at the few ``"code"`` strings rather than at every quote."""
    values = sorted({orjson.dumps(code) for code in codes})
    if not values:
        return None
    return re.compile(rb'"code"\s*:\s*(?:' + b"|".join(re.escape(v) for v in values) + rb")")


def _squeezed_regex(codes: Iterable[str]) -> re.Pattern[bytes] | None:
    """:func:`_needle_regex` for JSON squeezed and upper-cased (:func:`squeezed`): each
    code squeezed the same way, so that a code in the JSON is one in the squeezed JSON
    (a squeezed match may be a false alarm: :func:`_find_code` decides)."""
    listed = [orjson.dumps(code) for code in codes]
    if not listed or not all(code.isascii() for code in listed):
        return None  # a code squeezed away in part: searched in the JSON as it is
    values = sorted({squeezed(code) for code in listed})
    return re.compile(rb'"CODE"\s*:\s*(?:' + b"|".join(re.escape(v) for v in values) + rb")")


def _parse(body: bytes | dict[str, Any], text: bytes | None) -> tuple[dict[str, Any], bytes | None]:
    """The Bundle as a dict that is only read, and its canonical JSON (orjson's: the
    prohibited-code search reads it) when at hand: ``text``, the JSON of a dict given by
    the caller; bytes given are used as they are unless they hold a ``\\u`` escape
    (which could spell a code that the byte search would not see)."""
    if isinstance(body, bytes):
        return _bundle(body), (body if b"\\u" not in body else None)
    return _bundle(body), text


def _bundle(body: bytes | dict[str, Any]) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body) if isinstance(body, (bytes, str)) else body
    except orjson.JSONDecodeError:
        raise PolicyError("bundle", "the record is not JSON", location="Bundle") from None
    if not isinstance(parsed, dict) or parsed.get("resourceType") != "Bundle":
        raise PolicyError("bundle", "the record is not a FHIR Bundle", location="Bundle")
    return parsed


# -- the rules ---------------------------------------------------------------------------
def _names(policy: Policy, t: _Transfer) -> dict[str, Any]:
    key = (t.sender.key, t.recipient.key, t.purpose)
    found = policy._names.get(key)
    if found is None:
        found = policy._names[key] = _name_words(policy, t)
    return found


def _name_words(policy: Policy, t: _Transfer) -> dict[str, Any]:
    return {
        "sender": policy.name(t.sender),
        "recipient": policy.name(t.recipient),
        "purpose": policy.purpose_name(t.purpose),
        "from_j": policy.data.jurisdictions.get(t.from_j, {lang: t.from_j for lang in LANGS}),
        "to_j": policy.data.jurisdictions.get(t.to_j, {lang: t.to_j for lang in LANGS}),
    }


def _joined(texts: list[Text]) -> Text:
    return {lang: ("、" if lang != "en" else ", ").join(t[lang] for t in texts) for lang in LANGS}


def rule_prohibited(
    policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]
) -> RuleResult:
    lists = [str(x) for x in params.get("lists") or []]
    data = policy.data
    # The codes are looked for in the Bundle's JSON first (one scan for all of them);
    # only a Bundle holding one of them is walked to name its system and place.
    needles = policy._needles
    exporting = {j for n in lists for j in data.prohibited.get(n, {}).get("exporting") or []}
    searched = t.cross_border and t.from_j in exporting
    if searched and needles is not None and _maybe_code(policy, t, needles):
        hit = _find_code(t.bundle, data.codes, set(lists))
        if hit is not None:
            return _prohibited_found(policy, t, rule_id, hit)
    # Nothing found: the answer depends on the directions alone.
    key = ("prohibited", rule_id, tuple(lists), t.from_j, t.to_j)
    return policy._cached(key, lambda: (_prohibited_pass(policy, t, rule_id, lists), None))[0]


def _maybe_code(policy: Policy, t: _Transfer, needles: re.Pattern[bytes]) -> bool:
    """Whether a prohibited code may be in the Bundle. With a minimisation profile, in
    the minimised Bundle's squeezed JSON (which the minimisation searches next) and in
    the resources pass 1 replaced, as they were: that is the whole Bundle. Else in the
    Bundle's JSON."""
    profile = _profile(policy, t)
    squeezed_needles = policy._squeezed_needles
    if profile is None or squeezed_needles is None:
        return needles.search(t.json()) is not None
    done = _structural(policy, t, profile)
    if squeezed_needles.search(done.searched()[1]) is not None:
        return True
    # The resources pass 1 replaced, as they were: their compact JSON searched as it is
    # (orjson writes a listed code exactly as ``needles`` spells it; no squeeze needed).
    before, after = t.bundle.get("entry") or [], done.bundle["entry"]
    return any(
        needles.search(orjson.dumps(old)) is not None
        for old, new in zip(before, after, strict=True)
        if old is not new
    )


def _prohibited_pass(policy: Policy, t: _Transfer, rule_id: str, lists: list[str]) -> RuleResult:
    data = policy.data
    names = _joined([dict(data.prohibited[n]["name"]) for n in lists if n in data.prohibited])
    exporting = {j for n in lists for j in data.prohibited.get(n, {}).get("exporting") or []}
    if not t.cross_border or t.from_j not in exporting:
        where = _joined(
            [data.jurisdictions.get(j, {lang: j for lang in LANGS}) for j in sorted(exporting)]
        )
        return RuleResult(
            rule_id,
            "prohibited",
            "pass",
            "prohibited.not-exporting",
            policy.say("prohibited.not-exporting", exporting=where),
        )
    return RuleResult(
        rule_id,
        "prohibited",
        "pass",
        "prohibited.none",
        policy.say("prohibited.none", lists=names),
    )


def _prohibited_found(
    policy: Policy, t: _Transfer, rule_id: str, hit: tuple[str, str, str, str]
) -> RuleResult:
    data = policy.data
    name, code, display, path = hit
    return RuleResult(
        rule_id,
        "prohibited",
        "deny",
        "prohibited.found",
        policy.say(
            "prohibited.found",
            list=dict(data.prohibited[name]["name"]),
            code=code,
            display=f" {display}" if display else "",
            path=path,
            **_names(policy, t),
        ),
    )


def _find_code(
    node: Any, codes: dict[str, tuple[str, str]], lists: set[str], path: str = "Bundle"
) -> tuple[str, str, str, str] | None:
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and isinstance(code, str):
            found = codes.get(f"{system}|{code}")
            if found and found[0] in lists:
                return found[0], f"{system}|{code}", found[1], path
        for k, v in node.items():
            if isinstance(v, (dict, list)):
                hit = _find_code(v, codes, lists, f"{path}.{k}")
                if hit:
                    return hit
    elif isinstance(node, list):
        for n, item in enumerate(node):
            hit = _find_code(item, codes, lists, f"{path}[{n}]")
            if hit:
                return hit
    return None


def rule_agreement(
    policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]
) -> RuleResult:
    # Depends on the parties, the purpose, the categories and the day, never the patient.
    key = (
        "agreement",
        rule_id,
        t.sender.key,
        t.recipient.key,
        t.purpose,
        tuple(t.categories),
        t.now.date(),
    )
    result, t.agreement = policy._cached(key, lambda: _agreement_result(policy, t, rule_id))
    return result


def _agreement_result(
    policy: Policy, t: _Transfer, rule_id: str
) -> tuple[RuleResult, Agreement | None]:
    candidates = policy.data.agreements_between(t.sender.key, t.recipient.key)
    names = _names(policy, t)
    if not candidates:
        none = policy.say("agreement.none", **names)
        return RuleResult(rule_id, "agreement", "deny", "agreement.none", none), None
    refusals = []
    for agreement in candidates:
        code, text = _check_agreement(policy, t, agreement, names)
        if code == "agreement.ok":
            return RuleResult(rule_id, "agreement", "pass", code, text), agreement
        refusals.append((code, text))
    code, text = refusals[0]
    return RuleResult(rule_id, "agreement", "deny", code, text), None


def _check_agreement(
    policy: Policy, t: _Transfer, agreement: Agreement, names: dict[str, Any]
) -> tuple[str, Text]:
    data = policy.data
    basis = data.bases[agreement.basis]
    params = dict(names, agreement=agreement.id, basis=policy.label("bases", agreement.basis))
    if basis.cross_border != t.cross_border:
        return "agreement.wrong-basis", policy.say("agreement.wrong-basis", **params)
    if basis.region:
        for party in (t.sender, t.recipient):
            if not data.in_region(party, basis.region):
                region = dict((data.regions.get(basis.region) or {}).get("name") or {})
                return "agreement.outside-region", policy.say(
                    "agreement.outside-region",
                    party=policy.name(party),
                    place=data.place(party),
                    region=region or {lang: basis.region for lang in LANGS},
                    **params,
                )
    today = t.now.date()
    if agreement.valid_to is not None and today > agreement.valid_to:
        return "agreement.expired", policy.say(
            "agreement.expired", until=agreement.valid_to.isoformat(), **params
        )
    if agreement.valid_from is not None and today < agreement.valid_from:
        return "agreement.not-yet", policy.say(
            "agreement.not-yet", since=agreement.valid_from.isoformat(), **params
        )
    if t.purpose not in agreement.purposes:
        return "agreement.purpose", policy.say("agreement.purpose", **params)
    missing = [c for c in t.categories if c not in agreement.categories]
    category_names = data.category_names
    if missing:
        return "agreement.category", policy.say(
            "agreement.category",
            categories=_joined(
                [dict(category_names.get(c) or {lang: c for lang in LANGS}) for c in missing]
            ),
            **params,
        )
    filings = [f["number"] for f in agreement.filing if f.get("number")]
    filing_text = {
        lang: ("，" if lang != "en" else ", filed ") + " / ".join(filings) if filings else ""
        for lang in LANGS
    }
    return "agreement.ok", policy.say(
        "agreement.ok",
        filing=filing_text,
        until=agreement.valid_to.isoformat() if agreement.valid_to else "—",
        categories=_joined(
            [dict(category_names.get(c) or {lang: c for lang in LANGS}) for c in t.categories]
        ),
        **params,
    )


def rule_consent(policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]) -> RuleResult:
    names = _names(policy, t)
    parties = (t.sender.key, t.recipient.key, t.purpose)
    if not _consent_required(policy, t, params):
        make = functools.partial(_consent_words, policy, rule_id, "pass", "consent.not-required", t)
        return policy._cached(("consent-words", rule_id, "not-required", *parties), make)[0]
    people = t.people()
    if not people or not all(people):  # an individual no consent could name
        return RuleResult(
            rule_id, "consent", "hold", "consent.no-patient", policy.say("consent.no-patient")
        )
    # Every individual of the record needs a consent of their own: one patient's consent
    # never carries another's data across (a Bundle of two Patients).
    records = t.consents.for_patients(list(dict.fromkeys(i for p in people for i in p)))
    usable = [
        [r for r in records if r.covers(list(person), t.purpose, t.recipient.key, t.now)]
        for person in people
    ]
    if not all(usable):
        make = functools.partial(_consent_words, policy, rule_id, "hold", "consent.missing", t)
        return policy._cached(("consent-words", rule_id, "missing", *parties), make)[0]
    # Nor does a consent recorded under an identifier several different people share (a
    # placeholder HKID): it names none of them unambiguously, so it covers no one.
    ambiguous = _shared_identifiers(t, {r.patient for found in usable for r in found})
    covering: dict[str, ConsentRecord] = {}
    for found in usable:
        good = next((r for r in found if r.patient not in ambiguous), None)
        if good is None:
            system = found[0].patient.split("|", 1)[0]  # the system only: no patient data
            make = functools.partial(_consent_ambiguous, policy, rule_id, system, t)
            return policy._cached(("consent-ambiguous", rule_id, system, *parties), make)[0]
        covering.setdefault(good.id, good)
    t.consent_ids = list(covering)  # the basis of the transfer (its audit event)
    # Whether they cover is asked every time (consents change); the words depend on the
    # consents' ids and ends and the transfer's parties and purpose only.
    chosen = tuple(covering.values())
    ends = tuple(r.end for r in chosen)
    key = ("consent", rule_id, tuple(covering), ends, t.sender.key, t.recipient.key)
    make = functools.partial(_consent_ok, policy, rule_id, chosen, names)
    return policy._cached((*key, t.purpose), make)[0]


def _consent_required(policy: Policy, t: _Transfer, params: dict[str, Any]) -> bool:
    if t.cross_border:
        return bool(params.get("across", "required") == "required")
    within = params.get("within", "setting")
    return bool(
        policy.settings.policy_consent_within if within == "setting" else within == "required"
    )


def _consent_words(
    policy: Policy, rule_id: str, outcome: str, code: str, t: _Transfer
) -> tuple[RuleResult, None]:
    """The consent rule's words that depend on the parties and purpose alone."""
    return RuleResult(
        rule_id, "consent", outcome, code, policy.say(code, **_names(policy, t))
    ), None


def _consent_ambiguous(
    policy: Policy, rule_id: str, system: str, t: _Transfer
) -> tuple[RuleResult, None]:
    code = "consent.ambiguous-patient"
    words = policy.say(code, system=system, **_names(policy, t))
    return RuleResult(rule_id, "consent", "hold", code, words), None


def _shared_identifiers(t: _Transfer, patients: Collection[str]) -> set[str]:
    """Which of the consents' ``patients`` (``system|value``) are known to be shared by
    different people: two Patients of this record hold it and cannot be one person
    (they differ in another identifier of one system), or the sender's counters hold
    it for two individuals counted apart for that reason (:meth:`Counters.shared`)."""
    if not patients:
        return set()
    # Spellings of one identifier (a value's case, its spaces) are one pseudonym: each
    # is shared when it is, not only the last filed.
    tagged: dict[str, list[str]] = {}
    for patient in patients:
        system, value = patient.split("|", 1)
        tagged.setdefault(f"{system_tag(system)}:{t.alias(system, value)}", []).append(patient)
    sets = _person_sets(t)
    held: dict[str, int] = {}
    if len(sets) > 1:
        for items, _ in join_people(sets, {}):
            for item in tagged.keys() & set(items):
                held[item] = held.get(item, 0) + 1
    found = {item for item, n in held.items() if n > 1}
    rest = sorted(tagged.keys() - found)
    if rest:
        found |= t.counters.shared(t.now.year, t.sender.key, rest)
    return {patient for item in found for patient in tagged.get(item, ())}


def _consent_ok(
    policy: Policy, rule_id: str, records: tuple[ConsentRecord, ...], names: dict[str, Any]
) -> tuple[RuleResult, None]:
    ends = [r.end for r in records if r.end is not None]
    until = min(ends).date().isoformat() if ends else "—"  # the first to lapse
    ids = ", ".join(r.id for r in records)
    words = policy.say("consent.ok", consent=ids, until=until, **names)
    return RuleResult(rule_id, "consent", "pass", "consent.ok", words), None


def rule_volume(policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]) -> RuleResult:
    data = policy.data
    exporting = [str(j) for j in params.get("exporting") or ["CN"]]
    if not t.cross_border or t.from_j not in exporting:
        make = functools.partial(_volume_elsewhere, policy, rule_id, exporting)
        return policy._cached(("volume-elsewhere", rule_id, *exporting), make)[0]
    if t.agreement is None:
        return RuleResult(rule_id, "volume", "skip", "skipped", policy.say("skipped"))
    basis = data.bases[t.agreement.basis]
    if basis.volume_limit is None:  # the words depend on the basis alone
        make = functools.partial(_volume_unlimited, policy, rule_id, basis.key)
        return policy._cached(("volume-unlimited", rule_id, basis.key), make)[0]
    category = str(params.get("category", "sensitive"))
    year = t.now.year
    persons = _persons(policy, t)  # every individual of the record, each once
    count = t.counters.count(year, t.sender.key, basis.key, category)
    # People, not identifiers: a Patient's pseudonyms are one individual, and one
    # counted already by any of them is not counted again.
    count += t.counters.joined(year, t.sender.key, basis.key, category, _person_sets(t))
    if persons and count <= basis.volume_limit:
        t.counts = [(year, t.sender.key, basis.key, category, p) for p in persons]
    # The words depend on the parties, purpose, basis, category, year and count alone.
    key = ("volume", rule_id, t.sender.key, t.recipient.key, t.purpose, basis.key, category)
    make = functools.partial(_volume_result, policy, t, rule_id, basis, category, count)
    return policy._cached((*key, year, count), make)[0]


def _volume_unlimited(policy: Policy, rule_id: str, basis: str) -> tuple[RuleResult, None]:
    words = policy.say("volume.no-threshold", basis=policy.label("bases", basis))
    return RuleResult(rule_id, "volume", "pass", "volume.no-threshold", words), None


def _volume_elsewhere(
    policy: Policy, rule_id: str, exporting: list[str]
) -> tuple[RuleResult, None]:
    jurisdictions = policy.data.jurisdictions
    where = _joined([jurisdictions.get(j, {lang: j for lang in LANGS}) for j in exporting])
    words = policy.say("volume.not-exporting", exporting=where)
    return RuleResult(rule_id, "volume", "pass", "volume.not-exporting", words), None


def _volume_result(
    policy: Policy, t: _Transfer, rule_id: str, basis: Basis, category: str, count: int
) -> tuple[RuleResult, None]:
    data = policy.data
    assert basis.volume_limit is not None
    words = dict(
        _names(policy, t),
        year=str(t.now.year),
        basis=policy.label("bases", basis.key),
        category=dict(data.category_names.get(category) or {lang: category for lang in LANGS}),
        count=f"{count:,}",
        limit=f"{basis.volume_limit:,}",
        warning=f"{basis.volume_warning or basis.volume_limit:,}",
    )
    if count > basis.volume_limit:
        over = policy.say("volume.over", **words)
        return RuleResult(rule_id, "volume", "deny", "volume.over", over), None
    if basis.volume_warning is not None and count >= basis.volume_warning:
        warn = policy.say("volume.warn", **words)
        return RuleResult(rule_id, "volume", "warn", "volume.warn", warn), None
    ok = policy.say("volume.ok", **words)
    return RuleResult(rule_id, "volume", "pass", "volume.ok", ok), None


def _persons(policy: Policy, t: _Transfer) -> list[str]:
    """One key per individual of the record (each Patient: :meth:`_Transfer.people`):
    the keyed pseudonym of their national identifier when they have one, else of their
    first identifier. Every individual counts (a record of two patients is two)."""
    national = policy._national
    out: dict[str, None] = {}
    for ids in t.people():
        if ids:
            chosen = next((p for p in ids if p.split("|", 1)[0] in national), ids[0])
            out[t.alias(*chosen.split("|", 1))] = None
    return list(out)


def _person_sets(t: _Transfer) -> list[tuple[str, ...]]:
    """Each Patient of the record (:meth:`_Transfer.people`) by the pseudonyms of its
    identifiers, each set once (a Patient without identifiers names no one), each
    pseudonym tagged with its identifier system (:func:`system_tag`): what the counters
    and the transfer report join individuals by — never two different identifiers of
    one system in one individual (gateway/audit/_transfers.py ``join_people``). The
    audit events' pseudonyms stay bare (:func:`_individuals`)."""
    out: dict[tuple[str, ...], None] = {}
    for ids in t.people():
        if ids:
            pairs = (i.split("|", 1) for i in ids)
            tagged = (f"{system_tag(s)}:{t.alias(s, v)}" for s, v in pairs)
            out[tuple(dict.fromkeys(tagged))] = None
    return list(out)


def new_individual(fresh: Sequence[str], taken: Collection[str]) -> str:
    """The id of an individual counted anew: its first pseudonym that is no counted
    individual's id — an identifier it shares with individuals a conflict kept it
    apart from may be one's (``taken``: those holding any of ``fresh``, which every
    individual whose id is one of them does), and sharing the id would join them."""
    found = next((p for p in fresh if p not in taken), None)
    return found or f"{fresh[0][:40]}#{uuid.uuid4().hex[:12]}"


@functools.lru_cache(maxsize=1024)
def system_tag(system: str) -> str:
    """A short tag of an identifier system's URI (not secret: a system is an authority,
    not patient data): 8 hex digits of its SHA-256, enough to tell a record's systems
    apart in the few kept with one individual."""
    return hashlib.sha256(system.encode()).hexdigest()[:8]


def _individuals(t: _Transfer, patients: list[str]) -> list[str]:
    """The pseudonyms of every individual's identifiers (each once): the Patient
    entries' (``patients``, already made) first, then those of contained and nested
    Patients, which only the record's walk finds."""
    out = dict.fromkeys(patients)
    for ids in t.people():
        for ident in ids:
            out.setdefault(t.alias(*ident.split("|", 1)), None)
    return list(out)


def _fixed(
    policy: Policy, t: _Transfer, kind: str, rule_id: str, params: dict[str, Any]
) -> RuleResult | None:
    """A rule's result when the parties and purpose alone decide it (the same words the
    rule gives then), else None: the rule runs at every decision."""
    if kind == "prohibited":
        lists = [str(x) for x in params.get("lists") or []]
        prohibited = policy.data.prohibited
        exporting = {j for n in lists for j in prohibited.get(n, {}).get("exporting") or []}
        searched = t.cross_border and t.from_j in exporting
        if searched and policy._needles is not None:
            return None
        return _prohibited_pass(policy, t, rule_id, lists)
    if kind == "consent" and not _consent_required(policy, t, params):
        return _consent_words(policy, rule_id, "pass", "consent.not-required", t)[0]
    if kind == "volume":
        countries = [str(j) for j in params.get("exporting") or ["CN"]]
        if not t.cross_border or t.from_j not in countries:
            return _volume_elsewhere(policy, rule_id, countries)[0]
    return None


def _profile(policy: Policy, t: _Transfer) -> Profile | None:
    """The minimisation profile of the transfer: the first that matches (its plan's)."""
    if t.plan is not None:
        return t.plan.profile
    for profile in policy.data.profiles:
        if profile.matches(t.cross_border, t.purpose, t.recipient.key):
            return profile
    return None


def _structural(policy: Policy, t: _Transfer, profile: Profile) -> Minimisation:
    """Pass 1 of ``profile``, made once per decision (the prohibited-code search may ask
    for it before the minimisation rule)."""
    if t.early is None or t.early.profile is not profile:
        t.early = structural_memo(t.bundle, profile, t.sender.key, t.alias, policy._passes)
    return t.early


def rule_minimise(policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]) -> RuleResult:
    profile = _profile(policy, t)
    if profile is None:
        return RuleResult(rule_id, "minimise", "pass", "minimise.none", policy.say("minimise.none"))
    nested = _nested(t.bundle, profile.resources)
    if nested:  # what pass 1 cannot reach is refused, never sent as it is
        kinds = {lang: ", ".join(nested) for lang in LANGS}
        words = policy.say("minimise.nested", resources=kinds, profile=profile.id)
        return RuleResult(rule_id, "minimise", "deny", "minimise.nested", words)
    # Pass 1 here; pass 2 (values left in any string, attachments) once the Bundle that
    # leaves is serialised (Policy._leave), which then updates this result.
    t.minimised = _structural(policy, t, profile)
    t.changes = t.minimised.changes
    t.minimise_rule = (rule_id, profile.id)
    return _minimised(policy, rule_id, profile.id, t.changes)


def _minimised(policy: Policy, rule_id: str, profile: str, changes: list[Change]) -> RuleResult:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change.action] = counts.get(change.action, 0) + 1
    key = ("minimise", rule_id, profile, *counts.items())
    return policy._cached(key, lambda: (_minimised_words(policy, rule_id, profile, counts), None))[
        0
    ]


def _minimised_words(
    policy: Policy, rule_id: str, profile: str, counts: dict[str, int]
) -> RuleResult:
    if not counts:
        return RuleResult(
            rule_id,
            "minimise",
            "pass",
            "minimise.unchanged",
            policy.say("minimise.unchanged", profile=profile),
        )
    summary = _joined(
        [
            {lang: f"{policy.label('actions', a)[lang]} {n}" for lang in LANGS}
            for a, n in counts.items()
        ]
    )
    return RuleResult(
        rule_id,
        "minimise",
        "change",
        "minimise.changed",
        policy.say("minimise.changed", profile=profile, changes=summary),
    )


# What a status reply's Task may hold (gateway/inbound's ``status_bundle``): anything
# else (contained resources, inputs, notes, a requester...) is more than a status.
_STATUS_ELEMENTS = frozenset(
    {
        "resourceType", "id", "meta", "identifier", "status", "statusReason", "intent",
        "focus", "for", "authoredOn", "lastModified", "owner",
    }
)  # fmt: skip
# What its ``for`` and ``focus`` may hold: by identifier only (a literal reference or a
# display could name another patient, or carry a name, beside the identifier checked).
_STATUS_REF_ELEMENTS = frozenset({"type", "identifier"})


def rule_return_to_issuer(
    policy: Policy, t: _Transfer, rule_id: str, params: dict[str, Any]
) -> RuleResult:
    """A referral's status reply goes back to the referral's sender: it passes when it
    is nothing but a status — Tasks of the elements a status has, naming one patient,
    no other resource (it is decided as made, before its signature is added) — and
    every identifier a Task names its patient or its referral by (``for``, ``focus``)
    is the recipient's own (under its identifier base): nothing the recipient did not
    issue crosses. Its basis is ``params.basis`` (a basis of the agreements file).
    Else held, the reason naming the element (and the identifier's system, never its
    value)."""
    base = f"{t.recipient.base}/"
    names = _names(policy, t)
    foreign: list[str] = []
    extra: list[str] = []
    for n, entry in enumerate(t.bundle.get("entry") or []):
        resource = (entry.get("resource") if isinstance(entry, dict) else None) or {}
        where = f"Bundle.entry[{n}].resource"
        kind = resource.get("resourceType")
        if kind != "Task":
            extra.append(f"{where} ({kind})")
            continue
        extra += [f"{where}.{k}" for k in resource if k not in _STATUS_ELEMENTS]
        for element in ("for", "focus"):
            ref = resource.get(element)
            ident = ref.get("identifier") if isinstance(ref, dict) else None
            if isinstance(ref, dict):
                extra += [f"{where}.{element}.{k}" for k in ref if k not in _STATUS_REF_ELEMENTS]
            if ref is not None and (
                not isinstance(ident, dict) or not str(ident.get("system") or "").startswith(base)
            ):
                system = ident.get("system") if isinstance(ident, dict) else None
                foreign.append(f"{where}.{element}" + (f" ({system})" if system else ""))
    if len(t.patients) > 1:
        extra.append(f"Bundle.entry: {len(t.patients)} patients")  # one status, one patient
    if extra:
        words = policy.say("status.not-status", where="; ".join(extra), **names)
        return RuleResult(rule_id, "return-to-issuer", "hold", "status.not-status", words)
    if foreign:
        words = policy.say("status.not-issuer", where="; ".join(foreign), **names)
        return RuleResult(rule_id, "return-to-issuer", "hold", "status.not-issuer", words)
    t.basis = str(params["basis"])
    words = policy.say("status.to-issuer", basis=policy.label("bases", t.basis), **names)
    return RuleResult(rule_id, "return-to-issuer", "pass", "status.to-issuer", words)


def _task_patients(bundle: dict[str, Any]) -> list[tuple[str, ...]]:
    """The patients a status reply's Tasks name (``Task.for`` by identifier), each by
    that identifier: the individuals of the reply."""
    out: dict[tuple[str, ...], None] = {}
    for entry in bundle.get("entry") or []:
        resource = (entry.get("resource") if isinstance(entry, dict) else None) or {}
        ref = resource.get("for") if resource.get("resourceType") == "Task" else None
        ident = ref.get("identifier") if isinstance(ref, dict) else None
        if isinstance(ident, dict) and ident.get("system") and ident.get("value"):
            out[(f"{ident['system']}|{ident['value']}",)] = None
    return list(out)


RULES: dict[str, Rule] = {
    "return-to-issuer": rule_return_to_issuer,
    "prohibited": rule_prohibited,
    "agreement": rule_agreement,
    "consent": rule_consent,
    "volume": rule_volume,
    "minimise": rule_minimise,
}
