"""Partner configuration: the network's defaults (``seeds/partners.yaml``) under the
operator's overrides (``$GATEWAY_HOME/partners.yaml``), read into :class:`Partner`.

Name, jurisdiction and preferred report variant are the network's (``network.yaml``):
they are exposed here, never repeated in a partners file. Secrets never appear in a
partners file either: a bearer token comes from a file or an environment variable, a
private key from the gateway's signing keys or a key file (docs/partners.md).
"""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..config import Settings
from ..datafiles import data_dir, load_data_file, syntax_problem
from ..errors import ConfigError
from ..network import Network
from ._split import WRITE_KINDS, split_bundle

__all__ = [
    "AUTH_TYPES",
    "DEFAULT_SCOPE",
    "Auth",
    "Partner",
    "configured_partners",
    "load_partners",
    "override_file",
    "partner_key",
    "seeds_file",
    "set_partner",
]

AUTH_TYPES = ("none", "bearer", "smart", "mtls")
# SMART v1 system scopes: the gateway writes (transactions) and reads (it asks the
# partner by identifier after an ambiguous failure, docs/delivery.md).
DEFAULT_SCOPE = "system/*.read system/*.write"
_AUTH_KEYS = {
    "none": set(),
    "bearer": {"token_file", "token_env"},
    "smart": {"token_url", "client_id", "scope", "key"},
    "mtls": {"cert_file", "key_file", "key_password_env", "key"},
}
_PARTNER_KEYS = {
    "base",
    "max_entries",
    "write",
    "fhir_version",
    "auth",
    "ca_file",
    "concurrency",
    "rate_limit",
    "check_overwrite",
}
# Keys that would hold a secret's value: refused, naming where the secret belongs.
_SECRET_KEYS = {
    "token",
    "access_token",
    "password",
    "secret",
    "client_secret",
    "private_key",
    "key_password",
}
_R4 = ("R4", "4.0", "4.0.0", "4.0.1")


@dataclass(frozen=True, slots=True)
class Auth:
    """How the gateway authenticates to a partner. Only the fields of its ``type``
    are set; paths are absolute. ``signing_keys`` and ``key`` name the gateway's own
    key (settings ``signing_keys``; default the ``institution``): SMART signs its client
    assertion with it, mTLS presents it when no cert/key files are given."""

    type: str = "none"  # none | bearer | smart | mtls
    token_file: Path | None = None  # bearer: first non-comment line is the token
    token_env: str | None = None  # bearer: ... or this environment variable
    token_url: str | None = None  # smart; None: {base}/.well-known/smart-configuration
    client_id: str | None = None  # smart; default: the institution setting
    scope: str = DEFAULT_SCOPE  # smart
    key: str | None = None  # smart/mtls: a folder of signing_keys, or env:NAME (smart)
    signing_keys: Path | None = None  # the signing_keys setting, filled in by loading
    cert_file: Path | None = None  # mtls: client certificate chain (PEM, leaf first)
    key_file: Path | None = None  # mtls: its private key (PEM)
    key_password_env: str | None = None  # mtls: environment variable with the key password

    def summary(self) -> dict[str, Any]:
        """What ``partners list`` shows: the set fields (never a secret: there is none)."""
        out: dict[str, Any] = {"type": self.type}
        for name in sorted(_AUTH_KEYS[self.type]):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out


@dataclass(frozen=True, slots=True)
class Partner:
    key: str  # the institution key in the network
    base: str  # FHIR base URL, e.g. https://fhir.example.hk/fhir/R4
    max_entries: int = 0  # most entries per request; 0 = no limit
    write: str = "transaction"  # transaction: atomic parts; batch: entry by entry
    name: str | None = None  # the network's name of the institution
    jurisdiction: str | None = None  # the network's (ISO 3166-2: HK, CN-GD...)
    fhir_version: str = "R4"  # the only one accepted
    auth: Auth = field(default_factory=Auth)
    ca_file: Path | None = None  # CA certificates for the partner's TLS server; None: system
    concurrency: int = 4  # connections (requests in flight) at most
    rate_limit: float = 0.0  # requests per second at most; 0 = no limit
    # The network's report_variant: a language, "bilingual", or languages joined by "+"
    # (docs/reports.md; ReportVariants.preferred checks it against the rules).
    report_variant: str = "bilingual"
    # Before a record's first part, ask the partner whether a conditional update would
    # replace another patient's resource (docs/delivery.md); false: only the local check.
    check_overwrite: bool = True

    def split(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        return split_bundle(bundle, self.max_entries, self.write)


# --- reading ---------------------------------------------------------------------------


def seeds_file(settings: Settings) -> Path:
    """The network's partner defaults: ``partners.yaml`` beside the network file (the
    partners of a network are named by its institution keys), else ``seeds/``'s."""
    beside = settings.network.parent / "partners.yaml"
    return beside if beside.is_file() else data_dir("seeds") / "partners.yaml"


def override_file(settings: Settings) -> Path:
    """The operator's overrides, written by ``gateway partners set``."""
    return settings.home / "partners.yaml"


def configured_partners(settings: Settings) -> dict[str, Partner]:
    """The partners of this gateway: the network's defaults under ``$GATEWAY_HOME``'s
    overrides, with auth defaults from the settings (institution, signing keys)."""
    network = Network.load(settings.network)
    _check_institution(settings, network)
    override = override_file(settings)
    return load_partners(seeds_file(settings), network, override=override, settings=settings)


def partner_key(
    name: str, partners: Mapping[str, Partner], network: Network, option: str = "--partner"
) -> str:
    """The key of the configured partner an operator names on the CLI: its institution
    key or facility code, in any case (``NSCH``, ``nsch``), or another name the network
    knows it by. Anything else is a ConfigError naming the partners there are (and the
    likely one): a typo must not read as "nothing queued" or "nothing listed"."""
    if name in partners:
        return name
    by_lower = {key.lower(): key for key in partners}
    found = by_lower.get(name.strip().lower())
    inst = network.find(name) if found is None else None
    if inst is not None and inst.key in partners:
        found = inst.key
    if found is not None:
        return found
    known = ", ".join(sorted(partners)) or "none"
    if inst is not None:
        raise ConfigError(
            "unknown-partner",
            f"{option} {name}: {inst.key} is an institution of the network with no FHIR "
            f"server configured (gateway partners set {inst.key} --url ...); the partners: "
            f"{known}",
        )
    codes = {
        **by_lower,
        **{i.facility.lower(): key for key in partners if (i := network.find(key))},
    }
    close = difflib.get_close_matches(name.lower(), codes, n=1, cutoff=0.6)
    hint = f"did you mean {codes[close[0]]}? " if close else ""
    raise ConfigError(
        "unknown-partner",
        f"{option} {name}: no partner of that key or facility code; {hint}the partners: {known}",
    )


def load_partners(
    path: Path | None = None,
    network: Network | None = None,
    *,
    override: Path | None = None,
    settings: Settings | None = None,
) -> dict[str, Partner]:
    """The partners of ``path`` (default ``seeds/partners.yaml``) by institution key,
    each entry of ``override`` (when the file exists) replacing the same keys of the
    same partner (``auth`` as a whole). With a ``network``, each key must be one of its
    institutions; ``settings`` give the auth defaults."""
    path = path or data_dir("seeds") / "partners.yaml"
    seeds = _entries(load_data_file(path), str(path))
    extra = _entries(_read_yaml(override), str(override)) if override else {}
    return _build(seeds, path, extra, override, network, settings)


def _read_yaml(path: Path) -> Any:
    """An override file, read afresh each time (``set`` changes it; data files are
    cached); absent: no overrides."""
    if not path.is_file():
        return {"partners": {}}
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {"partners": {}}
    except OSError as exc:
        raise ConfigError("unreadable", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("syntax", f"{path}: {syntax_problem(exc)}") from None


def _entries(raw: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("partners"), Mapping):
        raise ConfigError("partners", f"{where}: expected a mapping with a 'partners' mapping")
    out = {}
    for key, entry in raw["partners"].items():
        if not isinstance(entry, Mapping):
            raise ConfigError("partners", f"{where}: partners.{key}: expected a mapping")
        out[str(key)] = dict(entry)
    return out


def _build(
    seeds: dict[str, dict[str, Any]],
    seeds_path: Path,
    extra: dict[str, dict[str, Any]],
    extra_path: Path | None,
    network: Network | None,
    settings: Settings | None,
) -> dict[str, Partner]:
    out = {}
    for key in [*seeds, *(k for k in extra if k not in seeds)]:
        merged = {**seeds.get(key, {}), **extra.get(key, {})}
        # Each value is checked (and its relative paths resolved) where it was written.
        origin = {k: (extra_path if k in extra.get(key, {}) else seeds_path) for k in merged}
        where = str(extra_path if key in extra and extra_path else seeds_path)
        inst = network.find(key) if network is not None else None
        if network is not None and inst is None:
            raise ConfigError(
                "unknown-partner", f"{where}: partners.{key} is not an institution of the network"
            )
        partner = _partner(key, merged, origin, settings)
        if inst is not None:
            wanted = inst.data.get("report_variant") or "bilingual"
            if isinstance(wanted, (list, tuple)):
                wanted = "+".join(str(lang) for lang in wanted)
            partner = replace(
                partner,
                # in its own script: Traditional for Hong Kong, else Simplified
                name=inst.name("zh-Hant")
                if (inst.jurisdiction or "").startswith("HK")
                else inst.name(),
                jurisdiction=inst.jurisdiction,
                report_variant=str(wanted),
            )
        out[key] = partner
    return out


def _partner(
    key: str, raw: dict[str, Any], origin: dict[str, Path | None], settings: Settings | None
) -> Partner:
    def where(name: str) -> str:
        return f"{origin.get(name) or origin.get('base')}: partners.{key}"

    _no_secrets(raw, lambda: where("base"))
    if not isinstance(raw.get("base"), str) or not raw["base"]:
        raise ConfigError("partners", f"{where('base')}: needs 'base' (a URL)")
    if not raw["base"].startswith(("https://", "http://")):
        raise ConfigError("partners", f"{where('base')}.base: expected an http(s) URL")
    unknown = sorted(set(raw) - _PARTNER_KEYS)
    if unknown:  # named where the typo was written (the overrides, not the seeds below)
        hints = [
            f"{name} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(name, _PARTNER_KEYS, n=1, cutoff=0.6))
            else name
            for name in unknown
        ]
        raise ConfigError("partners", f"{where(unknown[0])}: unknown keys {', '.join(hints)}")
    limit = raw.get("max_entries", 0)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0 or limit == 1:
        raise ConfigError(
            "partners",
            f"{where('max_entries')}.max_entries: expected 0 (no limit) or a number from 2",
        )
    write = raw.get("write", "transaction")
    if write not in WRITE_KINDS:
        raise ConfigError(
            "partners", f"{where('write')}.write: expected one of {', '.join(WRITE_KINDS)}"
        )
    version = str(raw.get("fhir_version", "R4"))
    if version not in _R4:
        raise ConfigError(
            "partner-fhir-version",
            f"{where('fhir_version')}.fhir_version: {version!r} is not supported: the gateway "
            "writes FHIR R4 (4.0.1) only; give R4",
        )
    concurrency = raw.get("concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError(
            "partners", f"{where('concurrency')}.concurrency: expected a whole number from 1"
        )
    rate = raw.get("rate_limit", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate < 0:
        raise ConfigError(
            "partners",
            f"{where('rate_limit')}.rate_limit: expected requests per second (0 = no limit)",
        )
    check = raw.get("check_overwrite", True)
    if not isinstance(check, bool):
        raise ConfigError(
            "partners", f"{where('check_overwrite')}.check_overwrite: expected true or false"
        )
    return Partner(
        key,
        raw["base"].rstrip("/"),
        limit,
        str(write),
        fhir_version="R4",
        auth=_auth(raw.get("auth", "none"), where("auth") + ".auth", origin.get("auth"), settings),
        ca_file=_path(raw.get("ca_file"), where("ca_file") + ".ca_file", origin.get("ca_file")),
        concurrency=concurrency,
        rate_limit=float(rate),
        check_overwrite=check,
    )


def _no_secrets(raw: Mapping[str, Any], where: Any) -> None:
    """Refuse a value that looks like a secret, anywhere in the entry."""
    for name, value in raw.items():
        if str(name).lower() in _SECRET_KEYS:
            raise ConfigError(
                "partner-secret",
                f"{where()}: '{name}' would keep a secret in a partners file: give "
                "token_file or token_env (bearer), key or key_file (smart, mtls), "
                "key_password_env (mtls)",
            )
        if isinstance(value, Mapping):
            _no_secrets(value, where)


def _auth(raw: Any, where: str, origin: Path | None, settings: Settings | None) -> Auth:
    if isinstance(raw, str):
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError("partner-auth", f"{where}: expected a type or a mapping with 'type'")
    kind = raw.get("type", "none")
    if kind not in AUTH_TYPES:
        raise ConfigError(
            "partner-auth", f"{where}.type: {kind!r} is not one of {', '.join(AUTH_TYPES)}"
        )
    wrong = set(raw) - _AUTH_KEYS[kind] - {"type"}
    if wrong:
        raise ConfigError(
            "partner-auth",
            f"{where}: {', '.join(sorted(wrong))} not used by auth type {kind} "
            f"(it takes {', '.join(sorted(_AUTH_KEYS[kind])) or 'nothing'})",
        )
    text = {k: str(v) for k, v in raw.items() if v is not None}
    auth = Auth(
        type=kind,
        token_file=_path(text.get("token_file"), f"{where}.token_file", origin),
        token_env=text.get("token_env"),
        token_url=text.get("token_url"),
        client_id=text.get("client_id"),
        scope=text.get("scope", DEFAULT_SCOPE),
        key=text.get("key"),
        cert_file=_path(text.get("cert_file"), f"{where}.cert_file", origin),
        key_file=_path(text.get("key_file"), f"{where}.key_file", origin),
        key_password_env=text.get("key_password_env"),
    )
    if kind == "bearer" and (auth.token_file is None) == (auth.token_env is None):
        raise ConfigError(
            "partner-auth", f"{where}: bearer needs token_file or token_env (one of them)"
        )
    if (
        kind == "smart"
        and auth.token_url
        and not auth.token_url.startswith(("https://", "http://"))
    ):
        raise ConfigError("partner-auth", f"{where}.token_url: expected an http(s) URL")
    if kind == "mtls" and (auth.cert_file is None) != (auth.key_file is None):
        raise ConfigError("partner-auth", f"{where}: mtls needs cert_file and key_file together")
    if settings is not None and kind in ("smart", "mtls"):
        auth = replace(
            auth,
            client_id=auth.client_id or (settings.institution if kind == "smart" else None),
            key=auth.key or settings.institution,
            signing_keys=settings.signing_keys,
        )
    return auth


def _path(value: Any, where: str, origin: Path | None) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError("partners", f"{where}: expected a file path")
    path = Path(value).expanduser()
    if not path.is_absolute() and origin is not None:
        path = origin.parent / path
    return path


def _check_institution(settings: Settings, network: Network) -> None:
    if settings.institution is not None and network.institution(settings.institution) is None:
        raise ConfigError(
            "bad-setting",
            f"institution: {settings.institution!r} is not an institution key of the "
            f"network ({settings.network.name})",
        )


# --- writing ---------------------------------------------------------------------------


def set_partner(settings: Settings, key: str, changes: Mapping[str, Any]) -> Partner:
    """Change partner ``key`` in ``$GATEWAY_HOME/partners.yaml``: the given keys replace
    the partner's (``auth`` as a whole when it names a ``type``, else the given auth
    keys change the partner's current auth). Checked with every other partner before
    the file is replaced (atomically: a reader sees the old file or the new one)."""
    path = override_file(settings)
    current = _read_yaml(path)
    entries = _entries(current, str(path))
    entry = dict(entries.get(key, {}))
    for name, value in changes.items():
        if name != "auth":
            entry[name] = value
    auth_changes = dict(changes.get("auth") or {})
    if auth_changes:
        if "type" not in auth_changes:
            before = _current_auth(settings, key, entry)
            auth_changes = {**before, **auth_changes}
        entry["auth"] = auth_changes
    entries[key] = entry
    text = yaml.safe_dump({"partners": entries}, allow_unicode=True, sort_keys=False)
    network = Network.load(settings.network)
    _check_institution(settings, network)
    # Parse what would be written, with the seeds, before anything is replaced.
    found = _build(
        _entries(load_data_file(seeds_file(settings)), str(seeds_file(settings))),
        seeds_file(settings),
        _entries(yaml.safe_load(text), str(path)),
        path,
        network,
        settings,
    )
    _write_atomically(path, text)
    return found[key]


def _current_auth(settings: Settings, key: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    raw = entry.get("auth")
    if raw is None:
        seeds = _entries(load_data_file(seeds_file(settings)), str(seeds_file(settings)))
        raw = seeds.get(key, {}).get("auth", "none")
    return {"type": raw} if isinstance(raw, str) else dict(raw)


_HEADER = (
    "# Partner overrides of this gateway (gateway partners set), over the network's\n"
    "# seeds/partners.yaml. Secrets are never kept here: docs/partners.md.\n"
)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partners-", suffix=".yaml", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(_HEADER + text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
