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
from .logs import LEVELS, LOG_FORMATS

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
    # A record whose serialised Bundle is larger fails (validation.bundle-too-large).
    max_bundle_bytes: int = 16 * 1024 * 1024
    log_level: str = "warning"  # debug | info | warning | error (gateway/logs.py)
    log_format: str = "text"  # text | json (one JSON object per line)

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


def _coerce(name: str, value: Any, home: Path) -> Any:
    if name in ("network", "mappings", "api_token_file"):
        path = Path(str(value)).expanduser()
        return path if path.is_absolute() else home / path
    if name == "validate" and isinstance(value, bool):
        return value
    if name == "validate":
        text = str(value).lower()
        if text not in ("1", "true", "yes", "0", "false", "no"):
            raise ConfigError("bad-setting", f"validate must be true or false, not {value!r}")
        return text in ("1", "true", "yes")
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
    if name == "timezone" and not re.fullmatch(r"[+-](?:0\d|1[0-4]):[0-5]\d|Z", str(value)):
        raise ConfigError("bad-setting", f"timezone must be an offset like +08:00, not {value!r}")
    return str(value)
