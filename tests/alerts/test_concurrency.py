"""Several gateway processes evaluate one store at once: every transition reaches the
webhook once (each evaluator has its own engine, as separate processes would)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import timedelta

from gateway.alerts import CheckResult, check, notifier_from, states
from gateway.config import Settings
from gateway.store import Store

from .conftest import T0, Hook, Queue

EVALUATORS = 4


def _all_at_once(stores: list[Store], settings: Settings, minutes: int) -> list[CheckResult]:
    notifier = notifier_from(settings)
    barrier = threading.Barrier(len(stores))
    results: list[CheckResult] = []
    errors: list[BaseException] = []

    def run(store: Store) -> None:
        try:
            barrier.wait(timeout=30)
            results.append(check(store, settings, T0 + timedelta(minutes=minutes), notifier))
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    return results


def test_evaluators_at_once_notify_each_transition_once(
    store_url: str, store: Store, queue: Queue, settings: Settings, hook: Hook
) -> None:
    settings = replace(settings, alert_webhook_url=hook.url)
    stores = [Store.open(store_url, upgrade=False) for _ in range(EVALUATORS)]
    try:
        expected = []
        for round_ in range(3):
            rows = queue.add("hkpmc", 3) + queue.add("njmu2", 5)
            results = _all_at_once(stores, settings, 2 * round_)
            claimed = sorted((n.event, n.alert.partner) for r in results for n in r.notices)
            assert claimed == [("firing", "hkpmc"), ("firing", "njmu2")]
            expected += [("firing", "hkpmc"), ("firing", "njmu2")]
            queue.move(rows, "delivered")
            results = _all_at_once(stores, settings, 2 * round_ + 1)
            claimed = sorted((n.event, n.alert.partner) for r in results for n in r.notices)
            assert claimed == [("resolved", "hkpmc"), ("resolved", "njmu2")]
            expected += [("resolved", "hkpmc"), ("resolved", "njmu2")]
        received = [(event, partner) for event, partner, _ in hook.events()]
        assert sorted(received) == sorted(expected)
        assert len(states(store)) == 2  # one row per partner and kind, whoever inserted it
    finally:
        for opened in stores:
            opened.close()
