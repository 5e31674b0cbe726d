"""Settings: one typed object, read from ``$GATEWAY_HOME/gateway.toml`` and then from
``GATEWAY_*`` environment variables (which win). Every setting is listed in
docs/configuration.md; a fresh GATEWAY_HOME with no file runs on the demo network.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .datafiles import data_dir
from .errors import ConfigError

__all__ = ["DEFAULT_HOME", "Settings"]

DEFAULT_HOME = Path.home() / ".fhir-gateway"


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
    host: str = "127.0.0.1"
    port: int = 8080
    # DICOM elements larger than this (private blobs, embedded documents) are skipped
    # unread and counted in a warning; pixel data is never read.
    dicom_max_element_bytes: int = 1 << 20
    api_header_timeout: float = 10.0  # seconds for a request's line and headers
    api_body_timeout: float = 30.0  # seconds between pieces of a body (docs/configuration.md)
    # A bilingual report joins two reports: refuse one whose patient has no identifier
    # (false: accept it, still refusing two reports whose identifiers disagree).
    report_require_patient_identity: bool = True
    # Signing (docs/signing.md): keys folder (as `gateway keys init --out` makes it), the
    # trust store (CA certificates and CRLs), which key signs what: SENDER/TYPE=KEY;...
    signing_keys: Path | None = None
    signing_trust: Path | None = None
    signing_rules: str = ""

    @property
    def out_dir(self) -> Path:
        return self.home / "out"

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    @classmethod
    def load(cls, home: Path | str | None = None, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        root = Path(home or env.get("GATEWAY_HOME") or DEFAULT_HOME).expanduser()
        values: dict[str, Any] = {}
        config = root / "gateway.toml"
        if config.is_file():
            try:
                values.update(tomllib.loads(config.read_text(encoding="utf-8")))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError("syntax", f"{config}: {exc}") from None
        for f in fields(cls):
            name = f"GATEWAY_{f.name.upper()}"
            if name in env and f.name != "home":
                values[f.name] = env[name]
        known = {f.name for f in fields(cls)} - {"home"}  # home is where the file is
        unknown = set(values) - known
        if unknown:
            raise ConfigError(
                "unknown-setting",
                f"{config}: unknown settings {sorted(unknown)}; known: {sorted(known)}",
            )
        return replace(cls(home=root), **{k: _coerce(k, v, root) for k, v in values.items()})


_BOOLS = ("validate", "report_require_patient_identity")


def _coerce(name: str, value: Any, home: Path) -> Any:
    if name in ("network", "mappings", "api_token_file", "signing_keys", "signing_trust"):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
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
    if name == "timezone" and not re.fullmatch(r"[+-](?:0\d|1[0-4]):[0-5]\d|Z", str(value)):
        raise ConfigError("bad-setting", f"timezone must be an offset like +08:00, not {value!r}")
    return str(value)
