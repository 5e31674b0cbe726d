"""The store as the settings configure it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from ..config import Settings
from ..errors import ConfigError
from ._store import NEVER_PRUNED, STATES, Store, StoreError

__all__ = ["open_store", "retention"]


def open_store(settings: Settings, *, upgrade: bool = True) -> Store:
    """The configured store (``database_url``, else $GATEWAY_HOME/gateway.db), migrated
    to the current schema unless ``upgrade`` is False. A ``database_url`` that names no
    database the gateway can use, or one that does not answer, is one error line naming
    the setting, never SQLAlchemy's traceback (the password is never shown)."""
    try:
        return Store.for_home(settings.home, settings.database_url, upgrade=upgrade)
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        # unparseable, an unknown dialect, or a driver that is not installed (mysql://)
        raise ConfigError(
            "bad-setting",
            f"database_url: {_shown(settings.database_url)} is not a database the gateway "
            f"can open ({type(exc).__name__}: {_first_line(exc)}); use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB",
        ) from None
    except OperationalError as exc:  # the server refused, did not answer, or is locked
        raise StoreError(
            "unavailable",
            f"database_url: cannot use {_shown(settings.database_url)}: "
            f"{_first_line(exc.orig or exc)}",
        ) from None


def _shown(url: str | None) -> str:
    """The URL without its password (it may hold one: postgresql+psycopg://gw:secret@db/)."""
    if url is None:
        return "the SQLite file in GATEWAY_HOME"
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url) if "@" not in url else "the configured URL"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


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
