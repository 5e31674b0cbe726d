"""What only the running gateway knows: its delivery worker's circuit breakers. The
process that starts delivery registers its worker here (``watch_delivery``); the
dashboard shows "unknown" for a partner when none is registered in this process."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from ..store import utcnow

__all__ = ["breaker_states", "watch_delivery"]

_watched: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()


def watch_delivery(deliverer: Any) -> None:
    """Show ``deliverer``'s breakers (a gateway.delivery.Deliverer) on the dashboard."""
    with _lock:
        _watched.add(deliverer)


def breaker_states() -> dict[str, str]:
    """partner → closed, open or half-open, for the partners a worker has met."""
    now = utcnow()
    with _lock:
        found = list(_watched)
    return {
        key: str(breaker.state(now))
        for deliverer in found
        for key, breaker in dict(getattr(deliverer, "breakers", {})).items()
    }
