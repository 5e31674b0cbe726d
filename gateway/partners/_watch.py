"""The partners of a running gateway, read again when their files change: the
operator's ``$GATEWAY_HOME/partners.yaml`` (``gateway partners set`` writes it), the
network's ``partners.yaml`` (beside the network file, else ``seeds/``'s) and the
network file (names, jurisdictions, report variants). Watched the way routing watches
network.yaml and routes.yaml (gateway/datafiles.py ``file_stamps``, looked at every
``RELOAD_INTERVAL`` seconds): a partner added, or its base URL or auth changed, reaches
routing and the delivery worker without a restart.

All or nothing: files that do not load together leave the partners read before, and
the problem is logged once per edit (one line naming the file), as routing does.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..config import Settings
from ..datafiles import FileWatch, data_dir, load_data_file
from ..errors import ConfigError
from ._config import Partner, configured_partners, override_file

__all__ = ["PartnersWatch", "partner_files"]

log = logging.getLogger("gateway.partners")


def partner_files(settings: Settings) -> tuple[Path, ...]:
    """Every file the configured partners are read from, or would be once it exists:
    the network's partners file may appear beside the network file (it then replaces
    ``seeds/``'s), the operator's overrides when first set."""
    candidates = (
        settings.network,
        settings.network.parent / "partners.yaml",
        data_dir("seeds") / "partners.yaml",
        override_file(settings),
    )
    return tuple(dict.fromkeys(candidates))  # once each, in order


class PartnersWatch:
    """The configured partners (:func:`configured_partners`), read again when one of
    :func:`partner_files` changed. Thread-safe: routing (the outbound thread) and the
    delivery worker (its own thread) share one. ``current()`` returns the same dict
    until a change loads, then a new one: callers tell a change by identity."""

    def __init__(self, settings: Settings, partners: dict[str, Partner] | None = None) -> None:
        self.settings = settings
        self.files = partner_files(settings)
        self.watch = FileWatch(self.files)
        self._lock = threading.Lock()
        self.partners = partners if partners is not None else configured_partners(settings)

    def current(self) -> dict[str, Partner]:
        """The partners as their files say now (looked at every ``reload_interval``
        seconds at most; the last good ones while the files do not load)."""
        with self._lock:
            if self.watch.changed():
                self._reload()
            return self.partners

    def _reload(self) -> None:
        load_data_file.cache_clear()  # cached by path: the files changed under it
        try:
            partners = configured_partners(self.settings)
        except ConfigError as exc:
            log.error(
                "partners changed and do not load: %s; routing and delivery go on with "
                "the partners read before",
                " ".join(exc.issue.line().split()),  # one line: a YAML error spans several
            )
            return
        if partners != self.partners:
            changed = sorted(
                k for k in {*partners, *self.partners} if partners.get(k) != self.partners.get(k)
            )
            log.info("partners changed: %s read again", ", ".join(changed))
            self.partners = partners
