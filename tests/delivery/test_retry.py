"""Backoff with full jitter, Retry-After in both forms, the breaker's transitions."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from gateway.config import Settings
from gateway.delivery import Breaker, DeliveryConfig, backoff, retry_after
from gateway.errors import ConfigError

NOW = datetime(2026, 12, 5, 8, 0, 0)


def test_backoff_stays_within_the_growing_ceiling_and_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(60.0, 2.0 * 2 ** (attempt - 1))
        waits = [backoff(attempt, 2.0, 60.0, rng) for _ in range(300)]
        assert all(0.0 <= w <= ceiling for w in waits)
        # full jitter: spread over the whole range, not clustered at the ceiling
        assert min(waits) < ceiling * 0.1 and max(waits) > ceiling * 0.9


def test_backoff_of_a_huge_attempt_number_is_the_cap() -> None:
    assert backoff(10_000, 2.0, 600.0, random.Random(2)) <= 600.0


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert retry_after("120", NOW) == 120.0
    assert retry_after("Sat, 05 Dec 2026 08:00:30 GMT", NOW) == 30.0
    assert retry_after("Sat, 05 Dec 2026 07:00:00 GMT", NOW) == 0.0  # already past
    assert retry_after(None, NOW) is None
    assert retry_after("soon", NOW) is None
    assert retry_after("", NOW) is None


def test_breaker_opens_after_the_threshold_then_lets_one_probe_through() -> None:
    breaker = Breaker(threshold=3, cooldown=60)
    for _ in range(2):
        breaker.failure(NOW)
    assert breaker.state(NOW) == "closed" and breaker.allow(NOW)
    breaker.failure(NOW)
    assert breaker.state(NOW) == "open" and not breaker.allow(NOW + timedelta(seconds=59))
    later = NOW + timedelta(seconds=60)
    assert breaker.state(later) == "half-open"
    assert breaker.allow(later)  # the probe
    assert not breaker.allow(later)  # only one
    breaker.failure(later)  # the probe failed: open again, for a new cool-down
    assert breaker.state(later + timedelta(seconds=59)) == "open"
    again = later + timedelta(seconds=60)
    assert breaker.allow(again)
    breaker.success()
    assert breaker.state(again) == "closed" and breaker.failures == 0


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = Breaker(threshold=2, cooldown=10)
    breaker.failure(NOW)
    breaker.success()
    breaker.failure(NOW)
    assert breaker.state(NOW) == "closed"


def test_settings_feed_the_delivery_config(tmp_path: object) -> None:
    env = {"GATEWAY_DELIVERY_READ_TIMEOUT": "7.5", "GATEWAY_DELIVERY_MAX_ATTEMPTS": "3"}
    config = DeliveryConfig.from_settings(Settings.load(home=str(tmp_path), env=env))
    assert config.read_timeout == 7.5 and config.max_attempts == 3
    assert config.max_age == timedelta(hours=72)
    with pytest.raises(ConfigError, match="delivery_breaker_threshold must be positive"):
        Settings.load(home=str(tmp_path), env={"GATEWAY_DELIVERY_BREAKER_THRESHOLD": "0"})
    with pytest.raises(ConfigError, match="delivery_backoff_cap must be a number"):
        Settings.load(home=str(tmp_path), env={"GATEWAY_DELIVERY_BACKOFF_CAP": "long"})
