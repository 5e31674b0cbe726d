"""The signing trust store (``signing_trust``), parsed once and read again only when a
file under its folder changes.

Loading it means reading and parsing every CA certificate and CRL of the folder: that
was done for every inbound request. A stamp of the folder (each file's path, mtime and
size) is cheap to take, so every request still sees a changed trust store (a new CRL, a
partner's CA added or removed) without parsing an unchanged one again.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..config import Settings
from ..signing import TrustStore, trust_store

__all__ = ["TrustCache"]

_Stamp = tuple[tuple[str, int, int], ...]


def _stamp(folder: Path) -> _Stamp | None:
    """Path, mtime (ns) and size of the folder and of everything under it; None when
    it cannot be read (then nothing is cached: the load says why)."""
    try:
        paths = [folder, *folder.rglob("*")]
        stats = [(str(p), p.stat()) for p in paths]
    except OSError:
        return None
    return tuple(sorted((name, st.st_mtime_ns, st.st_size) for name, st in stats))


class TrustCache:
    """``trust()``: the TrustStore of ``settings.signing_trust`` as it is on disk now
    (None when the setting is unset). A load that fails is not cached: it raises again
    on the next call, as the uncached load did. Thread-safe."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._trust: TrustStore | None = None
        self.loads = 0  # how often the folder was parsed (tests, diagnostics)

    def trust(self) -> TrustStore | None:
        folder = self.settings.signing_trust
        if folder is None:
            return None
        stamp = _stamp(folder)
        with self._lock:
            if stamp is not None and stamp == self._stamp and self._trust is not None:
                return self._trust
            loaded = trust_store(self.settings)  # SigningError when unreadable
            self.loads += 1
            self._trust, self._stamp = loaded, stamp
            return loaded
