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
from ..network import Institution, Network

__all__ = ["LANGS", "Agreement", "Basis", "PolicyData", "Profile", "Text"]

LANGS = ("zh-Hans", "zh-Hant", "en")
# ISO 3166-2:CN codes of the places that are not the mainland for a transfer
_SEPARATE = {"CN-HK": "HK", "CN-MO": "MO", "CN-TW": "TW"}
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
    # The rules of a referral's status reply across a boundary (gateway/inbound's Task
    # back to the referral's sender), and the purpose it serves; None: the file names
    # none, and every such reply is held (a rules.yaml written before they existed).
    status_rules: list[dict[str, Any]] | None = None
    status_purpose: str = "referral"

    @classmethod
    def load(cls, policy_dir: Path, agreements_file: Path, defaults: tuple[int, int]) -> PolicyData:
        seeds = _mapping(agreements_file)
        rules = _mapping(policy_dir / "rules.yaml")
        _known_keys(agreements_file, "the file", seeds, _SEEDS_KEYS)
        _known_keys(policy_dir / "rules.yaml", "the file", rules, _RULES_FILE_KEYS)
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
            status_rules=list(rules["status_rules"]) if "status_rules" in rules else None,
            status_purpose=str(rules.get("status_purpose") or "referral"),
        )
        for n, entry in enumerate(seeds.get("agreements") or [], 1):
            data.agreements.append(_agreement(agreements_file, n, entry, data))
        for basis in data.bases.values():
            if basis.region is not None and basis.region not in data.regions:
                raise ConfigError(
                    "policy",
                    f"{agreements_file}: basis {basis.key}: unknown region "
                    f"{basis.region!r} ({', '.join(data.regions)})",
                )
        ids = [a.id for a in data.agreements]
        for twice in sorted({i for i in ids if ids.count(i) > 1}):
            # The id is what a decision, its Provenance and the audit name as the basis.
            raise ConfigError("policy", f"{agreements_file}: agreement id {twice!r} is given twice")
        for name, spec in data.prohibited.items():
            for code in spec.get("codes") or []:
                data.codes[f"{code['system']}|{code['code']}"] = (
                    name,
                    str(code.get("display", "")),
                )
        _check_rules(policy_dir / "rules.yaml", rules, data)
        return data

    # -- places -----------------------------------------------------------------------
    def jurisdiction(self, inst: Institution) -> str:
        """CN, HK or MO: a key of ``jurisdictions``. The network writes ISO 3166-2, in
        which Hong Kong and Macao are also ``CN-HK`` and ``CN-MO``: those are not the
        mainland; any other subdivision of CN is. Letter case and spaces do not count.
        No jurisdiction, or one the data does not know, is a ``config.policy`` error
        naming the institution: a transfer is never decided without knowing where its
        parties are (a mis-typed mainland sender would otherwise export nothing — no
        prohibited-code search, no count — and two parties without one be "domestic")."""
        code = str(inst.jurisdiction or "").strip().upper()
        if code in _SEPARATE:
            code = _SEPARATE[code]
        elif code.startswith("CN-") or code == "CN":
            code = "CN"
        if code not in self.jurisdictions:
            raise ConfigError(
                "policy",
                f"the network's institution {inst.key}: jurisdiction "
                f"{inst.jurisdiction!r} is not one of "
                f"{', '.join(self.jurisdictions)} (ISO 3166-2: CN-GD, HK or CN-HK, MO or CN-MO)",
            )
        return code

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
        """Every agreement of the pair, in the file's order: the first that allows the
        transfer is its basis (docs/policy.md, "Overlapping agreements")."""
        return [a for a in self.agreements if a.covers_pair(sender, recipient)]

    def check_parties(self, network: Network) -> None:
        """Every party of an agreement is an institution of the network, by its key (a
        mis-typed key would leave the agreement silently unused)."""
        for agreement in self.agreements:
            for party in sorted(agreement.senders | agreement.recipients):
                inst = network.find(party)
                if inst is None or inst.key != party:
                    hint = f" (its key is {inst.key!r})" if inst is not None else ""
                    raise ConfigError(
                        "policy",
                        f"{self.source}: agreement {agreement.id}: party {party!r} is not "
                        f"the key of an institution of the network{hint}",
                    )


def _mapping(path: Path) -> dict[str, Any]:
    raw = load_data_file(path)
    if not isinstance(raw, dict):
        raise ConfigError("policy", f"{path}: expected a mapping")
    return raw


def _basis(path: Path, key: str, spec: dict[str, Any], defaults: tuple[int, int]) -> Basis:
    where = f"basis {key}"
    _known_keys(path, where, spec, _BASIS_KEYS)
    if not isinstance(spec.get("cross_border", True), bool):
        raise ConfigError("policy", f"{path}: {where}: cross_border is true or false")
    for name in ("volume_limit", "volume_warning"):
        value = spec.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError("policy", f"{path}: {where}: {name} is a whole number or null")
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
    where = f"{where} ({entry['id']})"
    # A mis-typed key is refused, never ignored: "vaild" would make an agreement that
    # expired one in force for ever.
    _known_keys(path, where, entry, _AGREEMENT_KEYS)
    _known_keys(path, f"{where}: valid", entry.get("valid") or {}, frozenset({"from", "to"}))
    for name in ("parties", "from", "to", "purposes", "categories", "filing"):
        if name in entry and not isinstance(entry[name], list):
            raise ConfigError("policy", f"{path}: {where}: {name} is a list")
    for category in entry.get("categories") or []:
        if category not in data.category_names:
            raise ConfigError(
                "policy",
                f"{path}: {where}: unknown data category {category!r} "
                f"({', '.join(data.category_names)})",
            )
    if entry["basis"] not in data.bases:
        raise ConfigError("policy", f"{path}: {where}: unknown basis {entry['basis']!r}")
    parties = [str(p) for p in entry.get("parties") or []]
    senders = [str(p) for p in entry.get("from") or parties]
    recipients = [str(p) for p in entry.get("to") or parties]
    if not senders or not recipients:
        raise ConfigError("policy", f"{path}: {where}: no parties")
    for purpose in entry.get("purposes") or []:
        if purpose not in data.purposes:
            raise ConfigError("policy", f"{path}: {where}: unknown purpose {purpose!r}")
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


# What each file and entry may hold: any other key is a typo, refused when loaded.
_SEEDS_KEYS = frozenset({"jurisdictions", "divisions", "regions", "bases", "agreements"})
_RULES_FILE_KEYS = frozenset(
    {
        "rules",
        "purposes",
        "default_purpose",
        "categories",
        "category_names",
        "status_rules",
        "status_purpose",
    }
)
_BASIS_KEYS = frozenset(
    {"cross_border", "region", "volume_limit", "volume_warning", "filing_authority"}
)
_AGREEMENT_KEYS = frozenset(
    {"id", "basis", "parties", "from", "to", "filing", "purposes", "categories", "valid", "onward"}
)
# Each rule kind's parameters: name -> the values allowed (None: checked in _check_params).
_RULE_PARAMS: dict[str, dict[str, frozenset[str] | None]] = {
    "prohibited": {"lists": None},
    "agreement": {},
    "consent": {
        "across": frozenset({"required", "not-required"}),
        "within": frozenset({"setting", "required", "not-required"}),
    },
    "volume": {"category": None, "exporting": None},
    "minimise": {"profiles": None},
    "return-to-issuer": {"basis": None},
}
# The kinds a status reply's rules may use: it has no Patient entry, consent and
# counting have no one to ask about, and what leaves is the reply as made (not
# minimised or labelled), so only these decide it.
STATUS_KINDS = frozenset({"return-to-issuer", "agreement", "prohibited"})
_BASIS_KINDS = frozenset({"return-to-issuer", "agreement"})  # the kinds that give a basis


def _known_keys(path: Path, where: str, spec: Any, allowed: frozenset[str]) -> None:
    if not isinstance(spec, dict):
        raise ConfigError("policy", f"{path}: {where}: expected a mapping")
    unknown = sorted(str(k) for k in spec if k not in allowed)
    if unknown:
        raise ConfigError(
            "policy",
            f"{path}: {where}: unknown key {', '.join(map(repr, unknown))} "
            f"(one of {', '.join(sorted(allowed))})",
        )


def _check_rules(path: Path, raw: dict[str, Any], data: PolicyData) -> None:
    """The rules as written: a list (no rules at all would allow every transfer), each
    with a unique id, a known kind and only that kind's parameters, with values it
    knows. A typo is refused here rather than read as "not required" or "no list".
    ``status_rules`` (a referral's status reply) the same way, with its own kinds."""
    kinds = frozenset(_RULE_PARAMS) - {"return-to-issuer"}
    _check_rule_list(path, "rules", raw.get("rules"), kinds, data)
    if "status_rules" in raw:
        _check_rule_list(path, "status_rules", raw["status_rules"], STATUS_KINDS, data)
        if not any(str(r["kind"]) in _BASIS_KINDS for r in raw["status_rules"]):
            # Allowed on prohibited alone, a status would cross on no recorded basis.
            raise ConfigError(
                "policy",
                f"{path}: status_rules: one rule must give the basis "
                f"(kind {' or '.join(sorted(_BASIS_KINDS))})",
            )
        if data.status_purpose not in data.purposes:
            raise ConfigError(
                "policy",
                f"{path}: status_purpose: unknown purpose {data.status_purpose!r} "
                f"(one of {', '.join(data.purposes)})",
            )
    _check_tables(path, data)


def _check_rule_list(
    path: Path, key: str, rules: Any, kinds: frozenset[str], data: PolicyData
) -> None:
    if not isinstance(rules, list) or not rules:
        raise ConfigError("policy", f"{path}: {key}: a list of at least one rule is needed")
    seen: set[str] = set()
    for n, rule in enumerate(rules, 1):
        if not isinstance(rule, dict) or "id" not in rule or "kind" not in rule:
            raise ConfigError("policy", f"{path}: {key}: rule #{n}: a rule needs id and kind")
        where = f"{key}: rule {rule['id']}" if key != "rules" else f"rule {rule['id']}"
        _known_keys(path, where, rule, frozenset({"id", "kind", "params"}))
        if str(rule["id"]) in seen:
            # Results, the audit and the minimisation's update find a rule by its id.
            raise ConfigError("policy", f"{path}: {where}: the id is given twice")
        seen.add(str(rule["id"]))
        kind = str(rule["kind"])
        if kind not in kinds:
            raise ConfigError(
                "policy",
                f"{path}: {where}: unknown kind {kind!r} ({', '.join(sorted(kinds))})",
            )
        params = rule.get("params") or {}
        _known_keys(path, where + ": params", params, frozenset(_RULE_PARAMS[kind]))
        _check_params(path, where, kind, params, data)


def _check_tables(path: Path, data: PolicyData) -> None:
    """Categories and default purposes name known ones; a resource type no rule names
    falls to ``"*"``, which must be a category (else it would be no personal data, and
    no agreement asked to cover it)."""
    for resource_type, category in data.categories.items():
        if category is not None and category not in data.category_names:
            raise ConfigError(
                "policy",
                f"{path}: categories: {resource_type}: unknown category {category!r} "
                f"(one of {', '.join(data.category_names)}, or null)",
            )
    if data.categories.get("*") is None:
        raise ConfigError(
            "policy",
            f'{path}: categories: "*" (every other resource type) must name a category',
        )
    for resource_type, purpose in data.default_purpose.items():
        if purpose not in data.purposes:
            raise ConfigError(
                "policy",
                f"{path}: default_purpose: {resource_type}: unknown purpose {purpose!r}",
            )


def _check_params(
    path: Path, where: str, kind: str, params: dict[str, Any], data: PolicyData
) -> None:
    for name, allowed in _RULE_PARAMS[kind].items():
        if name in params and allowed is not None and params[name] not in allowed:
            raise ConfigError(
                "policy",
                f"{path}: {where}: {name} is one of {', '.join(sorted(allowed))}, "
                f"not {params[name]!r}",
            )
    known = {"lists": data.prohibited, "exporting": data.jurisdictions}
    for name, names in known.items():
        if name not in params:
            continue
        given = params[name]
        if not isinstance(given, list) or not all(isinstance(x, str) for x in given):
            raise ConfigError("policy", f"{path}: {where}: {name} is a list of names")
        for item in given:
            if item not in names:
                raise ConfigError(
                    "policy",
                    f"{path}: {where}: {name}: unknown {item!r} (one of {', '.join(names)})",
                )
    if kind == "return-to-issuer" and str(params.get("basis")) not in data.bases:
        # The basis the reply is recorded on: one of the bases the agreements file names.
        raise ConfigError(
            "policy",
            f"{path}: {where}: basis: unknown {params.get('basis')!r} "
            f"(one of {', '.join(data.bases)})",
        )
    category = params.get("category")
    if category is not None and category not in data.category_names:
        raise ConfigError(
            "policy",
            f"{path}: {where}: category: unknown {category!r} "
            f"(one of {', '.join(data.category_names)})",
        )
