"""The alert watch thread, as `gateway serve` runs it: it notices a threshold crossed and
resolved by itself, notifies each once, outlives a bad alerts.yaml, and stops."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.alerts import start_alert_watch
from gateway.config import Settings
from gateway.store import Store, utcnow

from .conftest import SMALL, Hook, Queue, write_overrides


def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the watch did not get there"
        time.sleep(0.02)


def test_the_watch_notifies_each_transition_once_and_stops(
    store: Store,
    queue: Queue,
    settings: Settings,
    hook: Hook,
    home: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = replace(settings, alert_webhook_url=hook.url)
    stop = start_alert_watch(store, settings, interval=0.02)
    try:
        rows = queue.add("njmu2", 3, at=utcnow())
        wait_for(lambda: len(hook.received) == 1)
        write_overrides(home, "alerts: {defaults: {queue_depth: {warning: x}}}\n")
        with caplog.at_level(logging.WARNING, logger="gateway.alerts"):
            wait_for(lambda: any("[config.alerts]" in r.getMessage() for r in caplog.records))
        write_overrides(home, SMALL)  # fixed: the watch goes on
        queue.move(rows, "delivered")
        wait_for(lambda: len(hook.received) == 2)
    finally:
        stop()
    assert hook.events() == [
        ("firing", "njmu2", "queue_depth"),
        ("resolved", "njmu2", "queue_depth"),
    ]
    queue.add("njmu2", 3, at=utcnow())
    time.sleep(0.1)  # stopped: nothing evaluates any more
    assert len(hook.received) == 2
