"""The policy's data: agreements and places (``seeds/agreements.yaml``), rules, purposes,
categories, minimisation profiles, prohibited code lists and labels
(``mappings/policy/``). Read once; every malformed entry is a ``config.policy`` error
naming the file and the entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from ..datafiles import load_data_file
from ..errors import ConfigError
from ..network import Institution

__all__ = ["LANGS", "Agreement", "Basis", "PolicyData", "Profile", "Text"]

LANGS = ("zh-Hans", "zh-Hant", "en")
Text = dict[str, str]  # one text per language of LANGS


@dataclass(frozen=True, slots=True)
class Basis:
    key: str
    cross_border: bool
    region: str | None
    volume_limit: int | None
    volume_warning: int | None
    authorities: dict[str, Text]


@dataclass(frozen=True, slots=True)
class Agreement:
    id: str
    basis: str
    senders: frozenset[str]
    recipients: frozenset[str]
    filing: tuple[dict[str, str], ...]
    purposes: frozenset[str]
    categories: frozenset[str]
    valid_from: date | None
    valid_to: date | None
    onward: str | None

    def covers_pair(self, sender: str, recipient: str) -> bool:
        return sender in self.senders and recipient in self.recipients


@dataclass(frozen=True, slots=True)
class Profile:
    """A minimisation profile (minimisation.yaml)."""

    id: str
    cross_border: bool | None
    purposes: frozenset[str] | None
    recipients: frozenset[str] | None
    resources: frozenset[str]
    pseudonymise: frozenset[str]
    address: str  # city | remove | keep
    telecom: frozenset[str]
    attachments: dict[str, str]

    def matches(self, cross_border: bool, purpose: str, recipient: str) -> bool:
        return (
            (self.cross_border is None or self.cross_border == cross_border)
            and (self.purposes is None or purpose in self.purposes)
            and (self.recipients is None or recipient in self.recipients)
        )

    def attachment_action(self, content_type: str) -> str:
        base = content_type.split(";")[0].strip().lower()
        return self.attachments.get(base, self.attachments.get("*", "drop"))


@dataclass
class PolicyData:
    source: Path
    jurisdictions: dict[str, Text]
    divisions: dict[str, dict[str, str]]
    regions: dict[str, dict[str, Any]]
    bases: dict[str, Basis]
    agreements: list[Agreement]
    rules: list[dict[str, Any]]
    purposes: dict[str, dict[str, str]]
    default_purpose: dict[str, str]
    categories: dict[str, str | None]
    category_names: dict[str, Text]
    profiles: list[Profile]
    prohibited: dict[str, dict[str, Any]]
    labels: dict[str, Any]
    codes: dict[str, tuple[str, str]] = field(default_factory=dict)  # "system|code" → list

    @classmethod
    def load(cls, policy_dir: Path, agreements_file: Path, defaults: tuple[int, int]) -> PolicyData:
        seeds = _mapping(agreements_file)
        rules = _mapping(policy_dir / "rules.yaml")
        minimisation = _mapping(policy_dir / "minimisation.yaml")
        prohibited = _mapping(policy_dir / "prohibited.yaml")
        labels = _mapping(policy_dir / "labels.yaml")
        data = cls(
            source=agreements_file,
            jurisdictions=dict(seeds.get("jurisdictions") or {}),
            divisions={str(k): v for k, v in (seeds.get("divisions") or {}).items()},
            regions=dict(seeds.get("regions") or {}),
            bases={
                k: _basis(agreements_file, k, v or {}, defaults)
                for k, v in (seeds.get("bases") or {}).items()
            },
            agreements=[],
            rules=list(rules.get("rules") or []),
            purposes=dict(rules.get("purposes") or {}),
            default_purpose=dict(rules.get("default_purpose") or {}),
            categories=dict(rules.get("categories") or {}),
            category_names=dict(rules.get("category_names") or {}),
            profiles=[
                _profile(policy_dir / "minimisation.yaml", p)
                for p in minimisation.get("profiles") or []
            ],
            prohibited=dict(prohibited.get("lists") or {}),
            labels=labels,
        )
        for n, entry in enumerate(seeds.get("agreements") or [], 1):
            data.agreements.append(_agreement(agreements_file, n, entry, data))
        for name, spec in data.prohibited.items():
            for code in spec.get("codes") or []:
                data.codes[f"{code['system']}|{code['code']}"] = (
                    name,
                    str(code.get("display", "")),
                )
        for rule in data.rules:
            if not isinstance(rule, dict) or "id" not in rule or "kind" not in rule:
                raise ConfigError(
                    "policy", f"{policy_dir / 'rules.yaml'}: a rule needs id and kind"
                )
        return data

    # -- places -----------------------------------------------------------------------
    def jurisdiction(self, inst: Institution) -> str:
        """CN, HK or MO (an ISO 3166-2 subdivision of CN is the mainland)."""
        code = str(inst.jurisdiction or "")
        return "CN" if code.startswith("CN") else code

    def city(self, inst: Institution) -> str | None:
        """The GB/T 2260 city code of a mainland institution (its ``division``)."""
        division = inst.data.get("division")
        if division is None:
            return None
        found = self.divisions.get(str(division))
        return str(found["city"]) if found else str(division)[:4] + "00"

    def in_region(self, inst: Institution, region: str) -> bool:
        spec = self.regions.get(region) or {}
        juris = self.jurisdiction(inst)
        if juris in (spec.get("jurisdictions") or []):
            return True
        return juris == "CN" and self.city(inst) in [str(c) for c in spec.get("cities") or []]

    def place(self, inst: Institution) -> Text:
        """Where an institution is, in each language (its division, else jurisdiction)."""
        division = self.divisions.get(str(inst.data.get("division")))
        if division:
            return {lang: str(division.get(lang, division.get("en", ""))) for lang in LANGS}
        return self.jurisdictions.get(self.jurisdiction(inst)) or {
            lang: self.jurisdiction(inst) for lang in LANGS
        }

    def agreements_between(self, sender: str, recipient: str) -> list[Agreement]:
        return [a for a in self.agreements if a.covers_pair(sender, recipient)]


def _mapping(path: Path) -> dict[str, Any]:
    raw = load_data_file(path)
    if not isinstance(raw, dict):
        raise ConfigError("policy", f"{path}: expected a mapping")
    return raw


def _basis(path: Path, key: str, spec: dict[str, Any], defaults: tuple[int, int]) -> Basis:
    limit, warning = defaults
    if "volume_limit" in spec:
        limit = spec["volume_limit"]
        warning = spec.get("volume_warning", limit)
    elif "volume_warning" in spec:
        warning = spec["volume_warning"]
    return Basis(
        key=key,
        cross_border=bool(spec.get("cross_border", True)),
        region=spec.get("region"),
        volume_limit=None if limit is None else int(limit),
        volume_warning=None if warning is None else int(warning),
        authorities=dict(spec.get("filing_authority") or {}),
    )


def _date(path: Path, where: str, value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise ConfigError("policy", f"{path}: {where}: not a date (YYYY-MM-DD)") from None


def _agreement(path: Path, n: int, entry: Any, data: PolicyData) -> Agreement:
    where = f"agreement #{n}"
    if not isinstance(entry, dict) or not entry.get("id") or not entry.get("basis"):
        raise ConfigError("policy", f"{path}: {where}: needs an id and a basis")
    if entry["basis"] not in data.bases:
        raise ConfigError(
            "policy", f"{path}: {where} ({entry['id']}): unknown basis {entry['basis']!r}"
        )
    parties = [str(p) for p in entry.get("parties") or []]
    senders = [str(p) for p in entry.get("from") or parties]
    recipients = [str(p) for p in entry.get("to") or parties]
    if not senders or not recipients:
        raise ConfigError("policy", f"{path}: {where} ({entry['id']}): no parties")
    for purpose in entry.get("purposes") or []:
        if purpose not in data.purposes:
            raise ConfigError(
                "policy", f"{path}: {where} ({entry['id']}): unknown purpose {purpose!r}"
            )
    valid = entry.get("valid") or {}
    return Agreement(
        id=str(entry["id"]),
        basis=str(entry["basis"]),
        senders=frozenset(senders),
        recipients=frozenset(recipients),
        filing=tuple({k: str(v) for k, v in f.items()} for f in entry.get("filing") or []),
        purposes=frozenset(entry.get("purposes") or []),
        categories=frozenset(entry.get("categories") or []),
        valid_from=_date(path, f"{where}: valid.from", valid.get("from")),
        valid_to=_date(path, f"{where}: valid.to", valid.get("to")),
        onward=entry.get("onward"),
    )


def _profile(path: Path, spec: Any) -> Profile:
    if not isinstance(spec, dict) or "id" not in spec:
        raise ConfigError("policy", f"{path}: a profile needs an id")
    when = spec.get("when") or {}
    address = str(spec.get("address", "keep"))
    if address not in ("city", "remove", "keep"):
        raise ConfigError("policy", f"{path}: profile {spec['id']}: address is city|remove|keep")
    attachments = {str(k).lower(): str(v) for k, v in (spec.get("attachments") or {}).items()}
    if set(attachments.values()) - {"rewrite", "drop"}:
        raise ConfigError("policy", f"{path}: profile {spec['id']}: attachments are rewrite|drop")
    return Profile(
        id=str(spec["id"]),
        cross_border=when.get("cross_border"),
        purposes=frozenset(when["purposes"]) if "purposes" in when else None,
        recipients=frozenset(when["recipients"]) if "recipients" in when else None,
        resources=frozenset(spec.get("resources") or ["Patient"]),
        pseudonymise=frozenset(spec.get("pseudonymise") or []),
        address=address,
        telecom=frozenset(spec.get("telecom") or []),
        attachments=attachments,
    )
