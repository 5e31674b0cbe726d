"""Settings: one typed object, read from ``$GATEWAY_HOME/gateway.toml`` and then from
``GATEWAY_*`` environment variables (which win). Every setting is listed in
docs/configuration.md; a fresh GATEWAY_HOME with no file runs on the demo network.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .datafiles import data_dir
from .errors import ConfigError
from .logs import LEVELS, LOG_FORMATS

__all__ = [
    "DEFAULT_HOME",
    "SECRET_FILES",
    "Settings",
    "exposed",
    "exposed_secrets",
    "not_private",
    "private_folder",
]

DEFAULT_HOME = Path.home() / ".fhir-gateway"


def not_private(path: Path, mode: int, what: str) -> str | None:
    """Why the secret file at ``path`` (``mode``: its ``st_mode``) is not used: group or
    others may read or write it (anyone who read it could act as the gateway). None
    when only its owner can. One rule for every secret file (the pseudonym key, signing
    keys, the API tokens); ``what`` names the file in the message."""
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path}: the {what} must be private (chmod 600)"
    return None


def exposed(path: Path, what: str) -> str | None:
    """:func:`not_private` for the file at ``path``; None too when it cannot be looked
    at (missing, unreadable: reading it says so)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    return not_private(path, mode, what)


def private_folder(path: Path) -> None:
    """Make ``path``, the folder the gateway keeps secrets it makes in
    (``$GATEWAY_HOME/secrets``: the API tokens, the pseudonym key), owner-only (0700)
    when it is not there: others on the host see not even which secrets there are. One
    that exists is left as it is (an operator's choice, or a mount)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


# Secret files the settings name, beyond those checked where they load (the API token
# file, the pseudonym key, the signing keys): the words not_private names each by.
SECRET_FILES = {
    "inbound_token_file": "inbound partner token file",
    "alert_webhook_token_file": "alert webhook token file",
    "alert_smtp_password_file": "SMTP password file",
    "mllp_tls_key": "MLLP TLS key file",
    "dicom_tls_key": "DICOM TLS key file",
}


def exposed_secrets(settings: Settings) -> list[tuple[str, str]]:
    """(setting, why) for each secret file of :data:`SECRET_FILES` that is there and
    that group or others may read or write (:func:`not_private`): ``gateway serve``
    refuses to start with one, as with an API token file others may read, rather than
    use it (or learn of it at the first partner request or alert)."""
    files = {
        "inbound_token_file": settings.inbound_token_file
        or settings.secrets_dir / "partner-tokens",
        "alert_webhook_token_file": settings.alert_webhook_token_file,
        "alert_smtp_password_file": settings.alert_smtp_password_file,
        # used only with its certificate (the listener speaks TLS: listeners.mllp)
        "mllp_tls_key": settings.mllp_tls_key if settings.mllp_tls_cert else None,
        "dicom_tls_key": settings.dicom_tls_key if settings.dicom_tls_cert else None,
    }
    out = []
    for setting, path in files.items():
        problem = exposed(path, SECRET_FILES[setting]) if path is not None else None
        if problem is not None:
            out.append((setting, problem))
    return out


def _default_network() -> Path:
    return data_dir("seeds") / "network.yaml"


def _default_mappings() -> Path:
    return data_dir("mappings")


@dataclass(frozen=True)
class Settings:
    home: Path = DEFAULT_HOME
    network: Path = field(default_factory=_default_network)  # institutions (seeds)
    mappings: Path = field(default_factory=_default_mappings)
    # Zone for HL7 times sent without one: mainland China and Hong Kong are both UTC+8.
    timezone: str = "+08:00"
    validate: bool = True  # parse every Bundle with the fhir.resources R4B models
    api_token_file: Path | None = None  # bearer tokens for the API, one per line
    # This gateway's own institution: a key of the network (seeds/network.yaml). It names
    # the gateway to partners (the SMART client_id, the key it authenticates with).
    institution: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # DICOM elements larger than this (private blobs, embedded documents) are skipped
    # unread and counted in a warning; pixel data is never read.
    dicom_max_element_bytes: int = 1 << 20
    api_header_timeout: float = 10.0  # seconds for a request's line and headers
    api_body_timeout: float = 30.0  # seconds between pieces of a body (docs/configuration.md)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto `gateway serve` believes (uvicorn's
    # forwarded_allow_ips): IP addresses or networks, "*" for any; loopback only by default.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    # A bilingual report joins two reports: refuse one whose patient has no identifier
    # (false: accept it, still refusing two reports whose identifiers disagree).
    report_require_patient_identity: bool = True
    # The message store and the MLLP listener (docs/store.md).
    database_url: str | None = None  # SQLAlchemy URL; None: SQLite $GATEWAY_HOME/gateway.db
    mllp_host: str = "127.0.0.1"
    mllp_port: int | None = None  # set: `gateway serve` also receives HL7 v2 over MLLP
    mllp_max_bytes: int = 4 * 1024 * 1024  # one message; larger ones are refused (AR)
    mllp_idle_timeout: float = 300.0  # seconds without a byte before a connection closes
    # seconds one frame may take from its start block to its end block (slowloris bound)
    mllp_frame_timeout: float = 600.0
    # connections served at once; more are closed at once (memory: each buffers up to
    # about mllp_max_bytes)
    mllp_max_connections: int = 200
    mllp_tls_cert: Path | None = None  # both set: the MLLP listener speaks TLS only
    mllp_tls_key: Path | None = None
    mllp_tls_ca: Path | None = None  # set: client certificates required, checked against it
    # The cross-border policy (docs/policy.md). The pseudonym key is a secret: from
    # GATEWAY_POLICY_KEY, else policy_key_file, else $GATEWAY_HOME/secrets/policy-key.
    policy_dir: Path | None = None  # rules, labels...; None: mappings/policy
    policy_agreements: Path | None = None  # None: seeds/agreements.yaml
    policy_key_file: Path | None = None
    policy_consent_within: bool = False  # consent also inside one jurisdiction
    policy_volume_limit: int = 10_000  # individuals a year, for bases with a threshold
    policy_volume_warning: int = 8_000
    # Days a message's content is kept, by state; a state not named is kept for ever, and
    # received/held/queued (still waiting) never lose theirs (gateway messages prune).
    retention_days: dict[str, int] = field(  # hash=False: Settings stays hashable
        default_factory=lambda: {"converted": 30, "failed": 90, "rejected": 30}, hash=False
    )
    # DICOM listeners (gateway/listeners/dicom.py; docs/listeners-dicom.md)
    dicom_port: int | None = None  # the C-STORE SCP runs only when set
    dicom_host: str = "127.0.0.1"
    dicom_ae_title: str = "FHIRGATEWAY"
    dicom_allowed_aes: tuple[str, ...] = ()  # calling AE titles let in; "*" lets in any
    dicom_tls_cert: Path | None = None  # both set: the C-STORE SCP speaks TLS only
    dicom_tls_key: Path | None = None
    # set: client certificates required, checked against it, and each study's identifiers
    # must name the institution the certificate names (listeners.dicom)
    dicom_tls_ca: Path | None = None
    dicom_quiet_seconds: float = 60.0  # a study is complete after this long with no instance
    dicom_keep_pixels: bool = False  # store pixel data and other bulk data too
    # A commit finding its study taken by another process waits this long for that
    # conversion's outcome before answering "converting" (202), never a false failure.
    dicom_commit_wait_seconds: float = 10.0
    # A record whose serialised Bundle is larger fails (validation.bundle-too-large).
    max_bundle_bytes: int = 16 * 1024 * 1024
    log_level: str = "warning"  # debug | info | warning | error (gateway/logs.py)
    log_format: str = "text"  # text | json (one JSON object per line)
    # Signing (docs/signing.md): keys folder (as `gateway keys init --out` makes it), the
    # trust store (CA certificates and CRLs), which key signs what: SENDER/TYPE=KEY;...
    signing_keys: Path | None = None
    signing_trust: Path | None = None
    signing_rules: str = ""
    # The audit trail (docs/audit.md): the key that signs tree heads, as a signing_rules KEY.
    audit_key: str = ""
    # Off: no stage appends AuditEvents (a test rig, a bench); on in any deployment.
    audit_enabled: bool = True
    # Delivery to partner FHIR servers (gateway/delivery; docs/delivery.md). Seconds unless
    # named otherwise; every delivery_* setting is checked by _delivery_setting.
    delivery_connect_timeout: float = 5.0  # nothing sent yet: a failure is safe to retry
    delivery_read_timeout: float = 60.0  # after the request was sent: ambiguous, ask
    delivery_write_timeout: float = 30.0
    delivery_pool_timeout: float = 10.0
    delivery_request_deadline: float = 120.0  # one request whole: connect to the answer's end
    delivery_backoff_base: float = 2.0  # retry n waits up to base * 2^(n-1) (full jitter)
    delivery_backoff_cap: float = 600.0  # ... and never more than this
    delivery_max_attempts: int = 20  # sends of one part, then dead
    delivery_max_age_hours: float = 72.0  # a record still not delivered after this: dead
    delivery_breaker_threshold: int = 5  # consecutive failures that open a partner's breaker
    delivery_breaker_cooldown: float = 60.0  # open this long, then one probe (half-open)
    delivery_lease_seconds: float = 300.0  # a row `sending` longer than this was interrupted
    delivery_poll_seconds: float = 1.0  # the worker's pause when nothing is due
    delivery_sweep_seconds: float = 30.0  # between looks for never-routed messages and holds
    # Inbound from partners (gateway/inbound; docs/inbound.md): partner tokens, who may
    # send unsigned, SMART token lifetime, the public URL partners use, mTLS at a reverse
    # proxy (off by default). Who this gateway is: `institution` above.
    inbound_token_file: Path | None = None  # None: $GATEWAY_HOME/secrets/partner-tokens
    inbound_unsigned: tuple[str, ...] = ()  # partner keys allowed to send unsigned Bundles
    inbound_token_seconds: int = 300
    # e.g. https://gw.hkpmc.example.hk: the only audience a SMART client assertion may
    # name (its /auth/token); unset, the token endpoint refuses every assertion
    inbound_public_url: str | None = None
    inbound_mtls_header: str = ""  # e.g. X-SSL-Client-Cert (URL-encoded PEM)
    inbound_mtls_proxies: tuple[str, ...] = ()  # proxy addresses trusted to set it
    # Refused Bundles kept as evidence, per partner: the newest this many, in at most this
    # many bytes (the oldest pruned first, the newest always kept): a partner cannot fill
    # the disk by sending refused Bundles
    inbound_refused_keep: int = 100
    inbound_refused_bytes: int = 64 * 1024 * 1024
    # ... and over all partners together (many partners, or many partner names from a
    # misconfiguration, could otherwise still fill the disk): the oldest pruned first
    inbound_refused_total_bytes: int = 1024 * 1024 * 1024
    # The outbound path (docs/delivery.md): the routing rules (None: seeds/routes.yaml), whether
    # `gateway serve` runs the delivery worker, and how long a record waits for the
    # record it links to (its order, its study) before it goes with the logical reference.
    delivery_routes: Path | None = None
    delivery_worker: bool = True
    delivery_reference_wait: float = 600.0
    # Optional OpenTelemetry tracing of records through their stages (docs/metrics.md,
    # "Tracing"): off | console | otlp. Off imports nothing of opentelemetry.
    tracing: str = "off"
    tracing_endpoint: str | None = None  # OTLP/HTTP traces URL (None: the exporter's default)
    tracing_service_name: str = "fhir-gateway"  # service.name; also salts the trace ids
    # Alerts (gateway/alerts; docs/alerts.md): thresholds are data (seeds/alerts.yaml under
    # $GATEWAY_HOME/alerts.yaml); these say how often and where notices go. The SMTP
    # password: GATEWAY_ALERT_SMTP_PASSWORD, else alert_smtp_password_file.
    alert_interval: float = 60.0  # seconds between evaluations of the alert watch
    alert_webhook_url: str | None = None
    alert_webhook_token_file: Path | None = None  # a bearer token, first line
    alert_smtp_host: str | None = None
    alert_smtp_port: int = 587
    alert_smtp_starttls: bool = True
    alert_smtp_user: str | None = None
    alert_smtp_password_file: Path | None = None
    alert_smtp_ca_file: Path | None = None  # CAs of the SMTP server's TLS; None: the system's
    alert_email_from: str | None = None
    alert_email_to: tuple[str, ...] = ()

    @property
    def out_dir(self) -> Path:
        return self.home / "out"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @property
    def effective_token_file(self) -> Path:
        """The API's bearer token file: api_token_file, else the one the gateway keeps
        (and creates on first start) in $GATEWAY_HOME/secrets."""
        return self.api_token_file or self.secrets_dir / "api-tokens"

    @classmethod
    def load(cls, home: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        root = Path(home or env.get("GATEWAY_HOME") or DEFAULT_HOME).expanduser()
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}  # where each value came from, for its error line
        config = root / "gateway.toml"
        if config.is_file():
            try:
                values.update(tomllib.loads(config.read_text(encoding="utf-8")))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError("syntax", f"{config}: {exc}") from None
            sources.update(dict.fromkeys(values, str(config)))
        for f in fields(cls):
            name = f"GATEWAY_{f.name.upper()}"
            if name in env and f.name != "home":
                values[f.name] = env[name]
                sources[f.name] = name
        known = {f.name for f in fields(cls)} - {"home"}  # home is where the file is
        unknown = set(values) - known
        if unknown:
            raise ConfigError(
                "unknown-setting",
                f"{config}: unknown settings {sorted(unknown)}{_suggest(unknown, known)}",
            )
        coerced = {}
        for key, value in values.items():
            try:
                coerced[key] = _coerce(key, value, root)
            except ConfigError as exc:  # name the file or variable the operator must fix
                raise exc.with_record(sources[key]) from None
        return replace(cls(home=root), **coerced)


def _suggest(unknown: set[str], known: set[str]) -> str:
    """The known names an unknown one is likely a typo of; the whole list of 80 names
    would bury the one the operator meant."""
    hints = [
        f"{name!r}: did you mean {close[0]!r}?"
        for name in sorted(unknown)
        if (close := difflib.get_close_matches(name, known, n=1, cutoff=0.75))
    ]
    more = "the settings are listed in docs/configuration.md and by `gateway config`"
    return "; " + "; ".join([*hints, more])


_BOOLS = (
    "validate",
    "report_require_patient_identity",
    "policy_consent_within",
    "delivery_worker",
    "audit_enabled",
)


def _coerce(name: str, value: Any, home: Path) -> Any:
    if name.startswith("tracing"):
        return _tracing_setting(name, value)
    if name in _STORE_SETTINGS:
        return _coerce_store(name, value, home)
    if name.startswith("alert_"):
        return _alert_setting(name, value, home)
    if name in ("network", "mappings", "api_token_file", *_POLICY_PATHS, *_SIGNING_PATHS):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name in ("policy_volume_limit", "policy_volume_warning"):
        number = _number(name, value, int)
        if number < 1:
            raise ConfigError("bad-setting", f"{name} must be at least 1, not {number}")
        return int(number)
    if name in _BOOLS and isinstance(value, bool):
        return value
    if name in _BOOLS:
        text = str(value).lower()
        if text not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError("bad-setting", f"{name} must be true or false, not {value!r}")
        return text in ("1", "true", "yes")
    if name in ("api_header_timeout", "api_body_timeout"):
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise ConfigError("bad-setting", f"{name} must be seconds, not {value!r}") from None
        if not 0 < seconds <= 3600:
            raise ConfigError("bad-setting", f"{name} must be 0–3600 seconds, not {seconds}")
        return seconds
    if name == "forwarded_allow_ips":
        return _forwarded_allow_ips(value)
    if name == "max_bundle_bytes":
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                "bad-setting", f"max_bundle_bytes must be a number, not {value!r}"
            ) from None
        if size < 1024:
            raise ConfigError("bad-setting", f"max_bundle_bytes must be at least 1024, not {size}")
        return size
    if name in ("log_level", "log_format"):
        allowed = LEVELS if name == "log_level" else LOG_FORMATS
        text = str(value).lower()
        if text not in allowed:
            raise ConfigError(
                "bad-setting", f"{name} must be one of {', '.join(allowed)}, not {value!r}"
            )
        return text
    if name == "port":
        try:
            port = int(value)
        except (TypeError, ValueError):
            raise ConfigError("bad-setting", f"port must be a number, not {value!r}") from None
        if not 0 < port < 65536:
            raise ConfigError("bad-setting", f"port must be 1–65535, not {port}")
        return port
    if name == "dicom_max_element_bytes":
        try:
            limit = int(value)
        except (TypeError, ValueError):
            raise ConfigError(
                "bad-setting", f"dicom_max_element_bytes must be a number, not {value!r}"
            ) from None
        if limit < 1024:
            raise ConfigError("bad-setting", f"dicom_max_element_bytes must be ≥ 1024, not {limit}")
        return limit
    if name.startswith("delivery_"):
        return _delivery_setting(name, value)
    if name.startswith("inbound_"):
        return _inbound_setting(name, value, home)
    if name.startswith("dicom_tls_"):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name.startswith("dicom_") and name != "dicom_max_element_bytes":
        return _dicom_setting(name, value)
    if name == "timezone" and not re.fullmatch(r"[+-](?:0\d|1[0-4]):[0-5]\d|Z", str(value)):
        raise ConfigError("bad-setting", f"timezone must be an offset like +08:00, not {value!r}")
    return str(value)


_POLICY_PATHS = ("policy_dir", "policy_agreements", "policy_key_file")
_SIGNING_PATHS = ("signing_keys", "signing_trust", "delivery_routes")
_STORE_SETTINGS = frozenset(
    {
        "database_url",
        "mllp_host",
        "mllp_port",
        "mllp_max_bytes",
        "mllp_idle_timeout",
        "mllp_frame_timeout",
        "mllp_max_connections",
        "mllp_tls_cert",
        "mllp_tls_key",
        "mllp_tls_ca",
        "retention_days",
    }
)


_MLLP_NUMBERS = (
    "mllp_port",
    "mllp_max_bytes",
    "mllp_idle_timeout",
    "mllp_frame_timeout",
    "mllp_max_connections",
)


def _coerce_store(name: str, value: Any, home: Path) -> Any:
    """The message store's and MLLP listener's settings."""
    if name.startswith("mllp_tls_"):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name in _MLLP_NUMBERS:
        number = _number(name, value, float if name.endswith("_timeout") else int)
        if number <= 0 or (name == "mllp_port" and number >= 65536):
            raise ConfigError("bad-setting", f"{name} must be positive (a port: 1–65535)")
        return number
    if name == "retention_days":
        return _retention(value)
    return str(value)


def _forwarded_allow_ips(value: Any) -> tuple[str, ...]:
    """Trusted proxy addresses: a TOML list or a comma-separated string; each an IP
    address, a network (no host bits set) or "*". Checked here because uvicorn takes a
    malformed entry silently as a name that no address ever matches."""
    items = value if isinstance(value, list) else str(value).split(",")
    entries = tuple(str(i).strip() for i in items if str(i).strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError:
            raise ConfigError(
                "bad-setting",
                f"forwarded_allow_ips: {entry!r} is not an IP address, a network "
                "(e.g. 10.0.0.0/24) or '*'",
            ) from None
    return entries


def _number(name: str, value: Any, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError("bad-setting", f"{name} must be a number, not {value!r}") from None


# A stored message's states (gateway/store: its STATES, where each is described):
# here because retention_days is keyed by them and is checked when the settings load.
MESSAGE_STATES = (
    "received",
    "converted",
    "failed",
    "rejected",
    "held",
    "outbox",
    "denied",
    "queued",
    "delivered",
    "dead",
    "discarded",
)


def _retention(value: Any) -> dict[str, int]:
    """A TOML table {state = days}, or (environment) "converted=30,failed=90"."""
    if isinstance(value, str):
        pairs = [p.partition("=") for p in value.split(",") if p.strip()]
        value = {k.strip(): v.strip() for k, _, v in pairs}
    if not isinstance(value, dict):
        raise ConfigError("bad-setting", "retention_days must be a table of state = days")
    out: dict[str, int] = {}
    for state, days in value.items():
        if state not in MESSAGE_STATES:  # a typo (convrted) refused now, not at serve/prune
            close = difflib.get_close_matches(str(state), MESSAGE_STATES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                "bad-setting",
                f"retention_days.{state}: not a message state; {hint}states: "
                f"{', '.join(MESSAGE_STATES)}",
            )
        number = _number(f"retention_days.{state}", days, int)
        if number < 0:
            raise ConfigError("bad-setting", f"retention_days.{state} must not be negative")
        out[str(state)] = int(number)
    return out


def _seconds(text: str) -> float:
    """A number of seconds, -1 when the text is none (out of every setting's range)."""
    try:
        return float(text)
    except ValueError:
        return -1.0


def _dicom_setting(name: str, value: Any) -> Any:
    """The DICOM listener settings, from TOML values or GATEWAY_DICOM_* strings."""
    text = str(value).strip()
    if name == "dicom_port":
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigError("bad-setting", f"dicom_port must be 1–65535, not {value!r}")
        return int(text)
    if name == "dicom_quiet_seconds":
        seconds = _seconds(text)
        if not 0 < seconds <= 86400:
            raise ConfigError(
                "bad-setting", f"dicom_quiet_seconds must be a number of seconds, not {value!r}"
            )
        return seconds
    if name == "dicom_commit_wait_seconds":
        seconds = _seconds(text)
        if not 0 <= seconds <= 600:  # 0: answer at once; an HTTP client waits no longer
            raise ConfigError(
                "bad-setting",
                f"dicom_commit_wait_seconds must be 0–600 seconds, not {value!r}",
            )
        return seconds
    if name == "dicom_keep_pixels":
        if isinstance(value, bool):
            return value
        if text.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError(
                "bad-setting", f"dicom_keep_pixels must be true or false, not {value!r}"
            )
        return text.lower() in ("1", "true", "yes")
    if name == "dicom_allowed_aes":
        # a TOML list, or a comma-separated GATEWAY_DICOM_ALLOWED_AES
        titles = value if isinstance(value, list) else text.split(",")
        aes = tuple(str(t).strip() for t in titles if str(t).strip())
        for title in aes:
            if title != "*":
                _ae_title(name, title)
        return aes
    if name == "dicom_ae_title":
        return _ae_title(name, text)
    return text


def _ae_title(name: str, title: str) -> str:
    """An AE title as PS3.5 allows it: 1-16 characters of the default repertoire,
    no backslash, no control characters."""
    printable = title.isascii() and title.isprintable() and "\\" not in title
    if not 0 < len(title) <= 16 or not printable:
        raise ConfigError(
            "bad-setting",
            f"{name}: {title!r} is not an AE title (1–16 ASCII characters, no backslash)",
        )
    return title


def _delivery_setting(name: str, value: Any) -> int | float:
    """The delivery settings: positive numbers (attempts and the breaker's threshold whole)."""
    whole = name in ("delivery_max_attempts", "delivery_breaker_threshold")
    number = _number(name, value, int if whole else float)
    if number <= 0:
        raise ConfigError("bad-setting", f"{name} must be positive, not {number}")
    return number


def _inbound_setting(name: str, value: Any, home: Path) -> Any:
    """The inbound settings: a path, lists (TOML, or comma-separated in the environment),
    the token lifetime (seconds, 30 to 3600)."""
    if name == "inbound_token_file":
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name in ("inbound_unsigned", "inbound_mtls_proxies"):
        items = value if isinstance(value, list) else str(value).split(",")
        return tuple(str(i).strip() for i in items if str(i).strip())
    if name == "inbound_token_seconds":
        seconds = int(_number(name, value, int))
        if not 30 <= seconds <= 3600:
            raise ConfigError("bad-setting", f"{name} must be 30–3600 seconds, not {seconds}")
        return seconds
    if name in ("inbound_refused_keep", "inbound_refused_bytes", "inbound_refused_total_bytes"):
        least = 1 if name == "inbound_refused_keep" else 1024
        number = int(_number(name, value, int))
        if number < least:
            raise ConfigError("bad-setting", f"{name} must be at least {least}, not {number}")
        return number
    if name == "inbound_public_url":
        url = str(value).strip().rstrip("/")
        if url and not url.startswith(("https://", "http://")):
            # it is the only audience a SMART client assertion may name: a wrong one
            # would refuse every partner, a relative one match nothing the partner knows
            raise ConfigError(
                "bad-setting",
                f"{name} must be the http(s) URL partners reach this gateway at "
                "(e.g. https://gw.hkpmc.example.hk)",
            )
        return url or None
    return str(value).strip()


def _alert_setting(name: str, value: Any, home: Path) -> Any:
    """The alert channels' settings (docs/alerts.md)."""
    if name.endswith("_file"):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name == "alert_email_to":  # a TOML list, or comma-separated in the environment
        items = value if isinstance(value, list) else str(value).split(",")
        return tuple(str(i).strip() for i in items if str(i).strip())
    if name == "alert_smtp_starttls":
        text = str(value).lower()
        if not isinstance(value, bool) and text not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError("bad-setting", f"{name} must be true or false, not {value!r}")
        return value if isinstance(value, bool) else text in ("1", "true", "yes")
    if name in ("alert_interval", "alert_smtp_port"):
        number = _number(name, value, float if name == "alert_interval" else int)
        if number <= 0 or (name == "alert_smtp_port" and number >= 65536):
            raise ConfigError("bad-setting", f"{name} must be positive (a port: 1–65535)")
        return number
    if name == "alert_webhook_url" and not str(value).startswith(("https://", "http://")):
        raise ConfigError("bad-setting", f"{name} must be an http(s) URL")
    return str(value).strip()


TRACING_MODES = ("off", "console", "otlp")


def _tracing_setting(name: str, value: Any) -> str:
    """tracing, tracing_endpoint, tracing_service_name (docs/metrics.md, "Tracing")."""
    text = str(value).strip()
    if name == "tracing" and text.lower() not in TRACING_MODES:
        modes = " | ".join(TRACING_MODES)
        raise ConfigError("bad-setting", f"tracing must be {modes}, not {value!r}")
    if name == "tracing_endpoint" and not text.startswith(("https://", "http://")):
        raise ConfigError("bad-setting", f"{name} must be an http(s) URL (OTLP/HTTP)")
    if name == "tracing_service_name" and not text:
        raise ConfigError("bad-setting", f"{name} must not be empty")
    return text.lower() if name == "tracing" else text
