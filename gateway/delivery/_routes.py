"""Routing: which converted records go to which partner, as data (``seeds/routes.yaml``,
setting ``delivery_routes``), and why.

A rule says *when* (every condition given must hold; a condition lists values, one of
which must match) and *to whom*. Conditions read what the record says of itself:

==========================  ==============================================================
``message_type``            ``REF^I12``, ``ORU^R01``, ``dicom-study``, ``CDA^C0006``;
                            shell patterns allowed (``REF^*``, ``CDA^*``)
``format``                  ``hl7v2``, ``dicom``, ``cda``
``sender``                  the sending institution (MSH-4, the DICOM study's, the CDA
                            custodian's), by key or facility code
``receiving_facility``      MSH-6 (HL7 v2 only), by key or facility code
``receiving_application``   MSH-5's namespace (HL7 v2 only); patterns allowed
``performer``               an organisation that performed it: ``DiagnosticReport.performer``,
                            ``ImagingStudy.series.performer`` (through a PractitionerRole
                            to its organisation)
``target``                  the institution a ``ServiceRequest.performer`` names: the
                            referral's target, the order's filler
==========================  ==============================================================

``to`` lists institution keys (or facility codes) and the words ``target``,
``performer`` and ``receiving-facility``: the institutions the record names there. Every
rule that matches adds its partners; ``purpose`` (optional) is the policy purpose of
what it sends. The gateway never routes to its own institution (setting
``institution``), and only to institutions with a FHIR server in
``seeds/partners.yaml``. Each record's routing lists every rule with whether it
matched and why (:meth:`Routing.lines`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from ..datafiles import data_dir, load_data_file
from ..errors import ConfigError, GatewayError
from ..intake.hl7v2 import parse_message, split_messages
from ..network import Network

__all__ = [
    "CONDITIONS",
    "DERIVED",
    "Destination",
    "Facts",
    "Route",
    "Routes",
    "Routing",
    "facts_of",
]

CONDITIONS = (
    "message_type",
    "format",
    "sender",
    "receiving_facility",
    "receiving_application",
    "performer",
    "target",
)
_PATTERNS = frozenset({"message_type", "receiving_application", "format"})
# `to` words: the institutions the record itself names there.
DERIVED = {"target": "target", "performer": "performer", "receiving-facility": "receiving_facility"}
_FACILITY_SYSTEM = "https://fhir-gateway.example.org/sid/hl7-facility"


@dataclass(frozen=True, slots=True)
class Facts:
    """What routing reads of a record. Institutions are network keys when the network
    knows them, else as the record gives them."""

    format: str
    message_type: str | None = None
    sender: str | None = None
    receiving_facility: str | None = None
    receiving_application: str | None = None
    performer: tuple[str, ...] = ()
    target: tuple[str, ...] = ()

    def values(self, condition: str) -> tuple[str, ...]:
        value = getattr(self, condition)
        if isinstance(value, tuple):
            return value
        return (value,) if value else ()


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    when: Mapping[str, tuple[str, ...]]
    to: tuple[str, ...]
    purpose: str | None = None
    description: str | None = None

    def check(self, facts: Facts) -> tuple[bool, str]:
        """(matched, why): every condition that held, or the first that did not."""
        held = []
        for condition, wanted in self.when.items():
            have = facts.values(condition)
            hit = next((v for v in have if _matches(condition, v, wanted)), None)
            name = condition.replace("_", " ")
            if hit is None:
                shown = ", ".join(have) if have else "none"
                return False, f"{name} {shown} not in [{', '.join(wanted)}]"
            held.append(f"{name} {hit} in [{', '.join(wanted)}]")
        return True, "; ".join(held) if held else "no condition (every record)"


def _matches(condition: str, value: str, wanted: tuple[str, ...]) -> bool:
    if condition in _PATTERNS:
        return any(fnmatchcase(value.upper(), w.upper()) for w in wanted)
    return value in wanted


@dataclass(slots=True)
class Destination:
    partner: str
    rules: list[str] = field(default_factory=list)
    purpose: str | None = None
    why: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Routing:
    """One record's routing: each rule with whether it matched and why, the partners
    it goes to, and the institutions it does not go to though a rule named them."""

    checked: list[tuple[str, bool, str]] = field(default_factory=list)
    partners: dict[str, Destination] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (institution, why)

    def lines(self) -> list[str]:
        out = [
            f"rule {rule}: {'matched' if ok else 'no match'} ({why})"
            for rule, ok, why in self.checked
        ]
        out += [
            f"→ {d.partner} by {', '.join(d.rules)}"
            + (f" (purpose {d.purpose})" if d.purpose else "")
            for d in self.partners.values()
        ]
        out += [f"✗ {inst}: {why}" for inst, why in self.skipped]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "rules": [{"rule": r, "matched": ok, "why": why} for r, ok, why in self.checked],
            "partners": [
                {"partner": d.partner, "rules": d.rules, "purpose": d.purpose, "why": d.why}
                for d in self.partners.values()
            ],
            "skipped": [{"institution": i, "why": why} for i, why in self.skipped],
        }


class Routes:
    """The routing rules, checked against the network when loaded."""

    def __init__(self, routes: list[Route], network: Network) -> None:
        self.routes = routes
        self.network = network

    @classmethod
    def load(cls, network: Network, path: Path | None = None) -> Routes:
        path = path or data_dir("seeds") / "routes.yaml"
        raw = load_data_file(path)
        if not isinstance(raw, Mapping) or not isinstance(raw.get("routes"), (list, tuple)):
            raise ConfigError("routes", f"{path.name}: expected a mapping with a 'routes' list")
        routes: list[Route] = []
        for n, entry in enumerate(raw["routes"], 1):
            routes.append(_route(entry, n, path.name, network))
        ids = [r.id for r in routes]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ConfigError("routes", f"{path.name}: rule ids used twice: {', '.join(twice)}")
        return cls(routes, network)

    def route(
        self, facts: Facts, partners: Iterable[str], institution: str | None = None
    ) -> Routing:
        """Where a record goes: every matching rule's institutions that are configured
        partners and not the gateway's own."""
        known = set(partners)
        out = Routing()
        for rule in self.routes:
            ok, why = rule.check(facts)
            out.checked.append((rule.id, ok, why))
            if not ok:
                continue
            for inst, how in self._targets(rule, facts):
                if inst == institution:
                    out.skipped.append((inst, f"rule {rule.id}: the gateway's own institution"))
                elif inst not in known:
                    out.skipped.append(
                        (inst, f"rule {rule.id}: no FHIR server configured (partners)")
                    )
                else:
                    dest = out.partners.setdefault(inst, Destination(inst))
                    dest.rules.append(rule.id)
                    dest.why.append(f"{rule.id}: {why}{how}")
                    dest.purpose = dest.purpose or rule.purpose
        return out

    def _targets(self, rule: Route, facts: Facts) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for item in rule.to:
            if item in DERIVED:
                named = facts.values(DERIVED[item])
                out += [(v, f" → {item} {v}") for v in named]
            else:
                out.append((item, ""))
        return out


def _route(entry: Any, n: int, where: str, network: Network) -> Route:
    if not isinstance(entry, Mapping) or not entry.get("id"):
        raise ConfigError("routes", f"{where}: routes[{n}]: needs an 'id'")
    rid = str(entry["id"])
    unknown = set(entry) - {"id", "description", "when", "to", "purpose"}
    if unknown:
        raise ConfigError(
            "routes", f"{where}: rule {rid}: unknown keys {', '.join(sorted(unknown))}"
        )
    when_raw = entry.get("when") or {}
    if not isinstance(when_raw, Mapping):
        raise ConfigError("routes", f"{where}: rule {rid}: 'when' must be a mapping")
    when: dict[str, tuple[str, ...]] = {}
    for condition, value in when_raw.items():
        if condition not in CONDITIONS:
            raise ConfigError(
                "routes",
                f"{where}: rule {rid}: unknown condition {condition!r} "
                f"(one of {', '.join(CONDITIONS)})",
            )
        values = _strings(value, f"{where}: rule {rid}: when.{condition}")
        if condition in ("sender", "receiving_facility", "performer", "target"):
            values = tuple(
                _institution(v, network, f"{where}: rule {rid}: when.{condition}") for v in values
            )
        when[str(condition)] = values
    to = _strings(entry.get("to"), f"{where}: rule {rid}: to")
    if not to:
        raise ConfigError("routes", f"{where}: rule {rid}: 'to' names no partner")
    to = tuple(
        t if t in DERIVED else _institution(t, network, f"{where}: rule {rid}: to") for t in to
    )
    purpose = entry.get("purpose")
    description = entry.get("description")
    return Route(
        rid,
        when,
        to,
        str(purpose) if purpose else None,
        str(description) if description else None,
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError("routes", f"{where}: expected a text or a list of texts")


def _institution(name: str, network: Network, where: str) -> str:
    inst = network.find(name)
    if inst is None:
        raise ConfigError("routes", f"{where}: {name!r} is not an institution of the network")
    return inst.key


# -- what a record says of itself ----------------------------------------------------------


def facts_of(
    bundle: Mapping[str, Any],
    network: Network,
    *,
    format: str,
    message_type: str | None = None,
    sender: str | None = None,
    raw: bytes | None = None,
) -> Facts:
    """The facts routing reads: from the stored message (type, sender, MSH-5/6 of the
    original bytes) and from the Bundle (performer and target organisations)."""
    application = facility = None
    if format == "hl7v2" and raw:
        application, facility = _msh_receiver(raw, network)
    entries = {
        str(e.get("fullUrl")): e.get("resource") or {}
        for e in bundle.get("entry") or []
        if isinstance(e, Mapping)
    }
    performer: list[str] = []
    target: list[str] = []
    for resource in entries.values():
        kind = resource.get("resourceType")
        if kind == "ServiceRequest":
            target += _organisations(resource.get("performer"), entries, network)
        elif kind == "DiagnosticReport":
            performer += _organisations(resource.get("performer"), entries, network)
        elif kind == "ImagingStudy":
            for series in resource.get("series") or []:
                actors = [p.get("actor") for p in series.get("performer") or []]
                performer += _organisations(actors, entries, network)
    return Facts(
        format=format,
        message_type=message_type,
        sender=_key(sender, network),
        receiving_facility=_key(facility, network),
        receiving_application=application,
        performer=tuple(dict.fromkeys(performer)),
        target=tuple(dict.fromkeys(target)),
    )


def _key(name: str | None, network: Network) -> str | None:
    if not name:
        return None
    inst = network.find(name)
    return inst.key if inst else name


def _organisations(refs: Any, entries: Mapping[str, Any], network: Network) -> list[str]:
    """Institution keys of the organisations ``refs`` point at (an Organization, or a
    PractitionerRole's organization), by the network's facility code or OID."""
    out = []
    for ref in refs or []:
        if not isinstance(ref, Mapping):
            continue
        resource = entries.get(str(ref.get("reference")))
        if resource and resource.get("resourceType") == "PractitionerRole":
            resource = entries.get(str((resource.get("organization") or {}).get("reference")))
        if not resource or resource.get("resourceType") != "Organization":
            continue
        for ident in resource.get("identifier") or []:
            value = str(ident.get("value") or "")
            if ident.get("system") == _FACILITY_SYSTEM or value.startswith("urn:oid:"):
                inst = network.find(value)
                if inst is not None:
                    out.append(inst.key)
                    break
    return out


def _msh_receiver(raw: bytes, network: Network) -> tuple[str | None, str | None]:
    """MSH-5.1 and MSH-6.1 of the first message in ``raw``, decoded as intake decodes it
    (MSH-18, the sender's charset); (None, None) when it does not decode (it would not
    have been converted either). Read from the bytes as ASCII with replacement, a
    Chinese receiving facility was U+FFFD (no route matched it, and two names were one
    string), and split as bytes, a Big5 or GB 18030 trail byte '|' (院 B0 7C in Big5)
    cut the field."""
    start = raw.find(b"MSH")
    if start < 0:
        return None, None
    try:
        message = parse_message(split_messages(raw[start:])[0], network=network)
    except (GatewayError, IndexError):
        return None, None
    comp = message.separators[1]
    application, facility = (message.msh(n).split(comp)[0].strip() for n in (5, 6))
    return application or None, facility or None
