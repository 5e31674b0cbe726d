"""Alert thresholds as data: the network's defaults (``seeds/alerts.yaml``) under the
operator's overrides (``$GATEWAY_HOME/alerts.yaml``), read as the partners are
(gateway/partners/_config.py): the seeds file beside the network file, else ``seeds/``'s.

    alerts:
      defaults:                      # every partner
        queue_depth: {warning: 100, critical: 1000}
        oldest_age: {warning: 30m, critical: 4h}
      partners:
        hkpmc:                       # an institution key of the network
          oldest_age: {warning: 10m}
          policy_holds: off          # not watched for this partner

An override replaces the levels it names, kind by kind, partner by partner.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Settings
from ..datafiles import data_dir, load_data_file, syntax_problem
from ..errors import ConfigError
from ..network import Network

__all__ = [
    "KINDS",
    "LEVELS",
    "LISTENER_KINDS",
    "PARTNER_KINDS",
    "AlertRules",
    "Threshold",
    "alert_rules",
    "load_rules",
    "override_file",
    "parse_duration",
    "seeds_file",
]

# What is watched per partner; oldest_age is in seconds, the others are counts.
PARTNER_KINDS = (
    "queue_depth",
    "oldest_age",
    "dead_letters",
    "policy_holds",
    "credentials_refused",
)
# ... and per listener the gateway runs (mllp_port, dicom_port set): 1 when its port
# refuses a connection. Given under alerts.defaults only.
LISTENER_KINDS = ("listener_down",)
KINDS = (*PARTNER_KINDS, *LISTENER_KINDS)
LEVELS = ("warning", "critical")  # level 1 and 2; 0 is "not firing"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")


@dataclass(frozen=True, slots=True)
class Threshold:
    """A kind's levels: a value at or above ``critical`` is critical, else at or above
    ``warning`` a warning; None: that level is not watched."""

    warning: float | None = None
    critical: float | None = None

    def level(self, value: float) -> tuple[int, float | None]:
        """(level, the threshold crossed): (0, None) below every level set."""
        if self.critical is not None and value >= self.critical:
            return 2, self.critical
        if self.warning is not None and value >= self.warning:
            return 1, self.warning
        return 0, None

    def to_json(self) -> dict[str, float | None]:
        return {"warning": self.warning, "critical": self.critical}


LISTENER_PREFIX = "listener:"  # alerts of a listener name it so where a partner goes

# The levels an entry gives for a kind (a level absent: inherited; None: not watched).
Given = Mapping[str, float | None]
# Under every file: a partner refusing our credentials blocks all its records, so it is
# watched even where a network's alerts.yaml predates the kind (`off` still silences it).
BUILT_IN: Mapping[str, Given] = {"credentials_refused": {"critical": 1.0}}


@dataclass(frozen=True, slots=True)
class AlertRules:
    defaults: Mapping[str, Given]
    partners: Mapping[str, Mapping[str, Given]]

    def for_partner(self, partner: str) -> dict[str, Threshold]:
        """The partner's thresholds by kind: its own levels over the defaults' (kinds
        switched off are left out); a listener's (``listener:mllp``) are the defaults'."""
        if partner.startswith(LISTENER_PREFIX):
            return self._levels(LISTENER_KINDS, {})
        return self._levels(PARTNER_KINDS, self.partners.get(partner, {}))

    def _levels(
        self, kinds: tuple[str, ...], own_levels: Mapping[str, Given]
    ) -> dict[str, Threshold]:
        out = {}
        for kind in kinds:
            base = self.defaults.get(kind, {})
            own = own_levels.get(kind, {})
            levels = {**base, **own}
            threshold = Threshold(levels.get("warning"), levels.get("critical"))
            if threshold.warning is not None or threshold.critical is not None:
                out[kind] = threshold
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "defaults": {k: dict(v) for k, v in self.defaults.items()},
            "partners": {
                p: {k: dict(v) for k, v in kinds.items()} for p, kinds in self.partners.items()
            },
        }


def seeds_file(settings: Settings) -> Path:
    """The network's defaults: ``alerts.yaml`` beside the network file, else ``seeds/``'s."""
    beside = settings.network.parent / "alerts.yaml"
    return beside if beside.is_file() else data_dir("seeds") / "alerts.yaml"


def override_file(settings: Settings) -> Path:
    return settings.home / "alerts.yaml"


def alert_rules(settings: Settings) -> AlertRules:
    """The thresholds of this gateway: the seeds under ``$GATEWAY_HOME/alerts.yaml``,
    partner keys checked against the network."""
    return load_rules(
        seeds_file(settings),
        override=override_file(settings),
        network=Network.load(settings.network),
    )


def load_rules(
    path: Path, *, override: Path | None = None, network: Network | None = None
) -> AlertRules:
    """The thresholds of ``path`` under ``override``'s, level by level: a partner's own
    levels win over the defaults (whichever file each is in), the override's over the
    seeds'."""
    seeds = _sections(load_data_file(path), path, network)
    defaults, partners = _merge(BUILT_IN, seeds[0]), dict(seeds[1])
    if override is not None and override.is_file():
        extra = _sections(_read_yaml(override), override, network)
        defaults = _merge(defaults, extra[0])
        for key, kinds in extra[1].items():
            partners[key] = _merge(partners.get(key, {}), kinds)
    return AlertRules(defaults, partners)


def _merge(base: Mapping[str, Given], extra: Mapping[str, Given]) -> dict[str, Given]:
    out = dict(base)
    for kind, given in extra.items():
        out[kind] = {**out.get(kind, {}), **given}
    return out


def _read_yaml(path: Path) -> Any:
    """The override file, read afresh each time (data files are cached)."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {"alerts": {}}
    except OSError as exc:
        raise ConfigError("unreadable", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("syntax", f"{path}: {syntax_problem(exc)}") from None


def _fail(path: Path, key: str, problem: str) -> ConfigError:
    return ConfigError("alerts", f"{path}: {key}: {problem}")


def _sections(
    raw: Any, path: Path, network: Network | None
) -> tuple[dict[str, Given], dict[str, dict[str, Given]]]:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("alerts"), Mapping):
        raise _fail(path, "alerts", "expected a mapping with an 'alerts' mapping")
    body = raw["alerts"]
    unknown = set(body) - {"defaults", "partners"}
    if unknown:
        raise _fail(path, f"alerts.{sorted(unknown)[0]}", "unknown key (defaults, partners)")
    defaults = _kinds(body.get("defaults") or {}, path, "alerts.defaults")
    partners_raw = body.get("partners") or {}
    if not isinstance(partners_raw, Mapping):
        raise _fail(path, "alerts.partners", "expected a mapping of partner keys")
    partners = {}
    for key, kinds in partners_raw.items():
        where = f"alerts.partners.{key}"
        if network is not None and network.find(str(key)) is None:
            raise _fail(path, where, "not an institution of the network")
        partners[str(key)] = _kinds(kinds or {}, path, where)
        for kind in LISTENER_KINDS:
            if kind in partners[str(key)]:
                raise _fail(path, f"{where}.{kind}", "a listener's: give it in alerts.defaults")
    return defaults, partners


def _kinds(raw: Any, path: Path, where: str) -> dict[str, Given]:
    if not isinstance(raw, Mapping):
        raise _fail(path, where, f"expected a mapping of {', '.join(KINDS)}")
    out: dict[str, Given] = {}
    for kind, levels in raw.items():
        key = f"{where}.{kind}"
        if kind not in KINDS:
            raise _fail(path, key, f"unknown kind (one of {', '.join(KINDS)})")
        if levels is None or levels is False:  # `off`, `false`, `null`: not watched
            out[kind] = dict.fromkeys(LEVELS)
            continue
        if not isinstance(levels, Mapping):
            raise _fail(path, key, "expected {warning: N, critical: N} or off")
        wrong = set(levels) - set(LEVELS)
        if wrong:
            raise _fail(path, f"{key}.{sorted(wrong)[0]}", "unknown level (warning, critical)")
        given = {
            level: _value(levels[level], path, f"{key}.{level}", kind)
            for level in LEVELS
            if level in levels
        }
        warning, critical = given.get("warning"), given.get("critical")
        if warning is not None and critical is not None and warning > critical:
            raise _fail(path, key, "warning must not be above critical")
        out[kind] = given
    return out


def _value(raw: Any, path: Path, key: str, kind: str) -> float | None:
    if raw is None or raw is False or (kind in LISTENER_KINDS and raw == 0):
        return None
    if kind in LISTENER_KINDS:
        if raw is not True and raw != 1:
            raise _fail(path, key, f"expected 1 (the listener is down) or off, not {raw!r}")
        return 1.0
    if kind == "oldest_age":
        seconds = parse_duration(raw)
        if seconds is None:
            raise _fail(
                path, key, f"expected a duration (seconds, or 90s, 15m, 4h, 2d), not {raw!r}"
            )
        return seconds
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise _fail(path, key, f"expected a whole number from 1, not {raw!r}")
    return float(raw)


def parse_duration(raw: Any) -> float | None:
    """Seconds from a number or ``90s``, ``15m``, ``4h``, ``2d``, ``1h30m``; None if not one."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        return float(raw) if raw > 0 else None
    text = str(raw).strip().lower()
    parts = _DURATION.findall(text)
    if not parts or _DURATION.sub("", text).strip():
        return None
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    return seconds if seconds > 0 else None
