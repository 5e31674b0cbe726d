"""The alert watch: a daemon thread that evaluates the thresholds every ``interval``
seconds and notifies each transition (``gateway serve`` and ``gateway work`` start it;
several processes over one store notify each transition once)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..config import Settings
from ..errors import GatewayError
from ..logs import safe_traceback
from ..store import Store
from ._evaluate import check
from ._notify import Notifier, notifier_from

__all__ = ["start_alert_watch"]

log = logging.getLogger("gateway.alerts")


def start_alert_watch(
    store: Store,
    settings: Settings,
    interval: float | None = None,
    *,
    notifier: Notifier | None = None,
) -> Callable[[], None]:
    """Start the watch (the first evaluation at once); returns the function that stops it
    and waits for an evaluation under way to finish. ``interval``: default the
    ``alert_interval`` setting."""
    every = settings.alert_interval if interval is None else interval
    channels = notifier if notifier is not None else notifier_from(settings)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                check(store, settings, notifier=channels)
            except GatewayError as exc:  # a bad alerts.yaml: said each time, fixed live
                log.warning("%s", exc.issue.line(), extra={"code": exc.issue.code})
            except Exception as exc:  # the watch must outlive one bad evaluation
                log.error(
                    "alert evaluation failed: %s",
                    type(exc).__name__,
                    extra={"code": "internal", "traceback": safe_traceback(exc)},
                )
            stop.wait(every)

    thread = threading.Thread(target=run, name="gateway-alerts", daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(timeout=every + 60)

    return stopper
