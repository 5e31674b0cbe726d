"""The store as the settings configure it."""

from __future__ import annotations

from datetime import timedelta

from ..config import Settings
from ..errors import ConfigError
from ._store import NEVER_PRUNED, STATES, Store

__all__ = ["open_store", "retention"]


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    """The configured store (``database_url``, else $GATEWAY_HOME/gateway.db), migrated
    to the current schema unless ``upgrade`` is False."""
    return Store.for_home(settings.home, settings.database_url, upgrade=upgrade)


def retention(settings: Settings) -> dict[str, timedelta]:
    """The per-state retention periods; states still waiting are left out (never pruned)."""
    unknown = set(settings.retention_days) - set(STATES)
    if unknown:
        raise ConfigError(
            "bad-setting",
            f"retention_days names unknown states {sorted(unknown)}; states: {', '.join(STATES)}",
        )
    return {
        state: timedelta(days=days)
        for state, days in settings.retention_days.items()
        if state not in NEVER_PRUNED
    }
