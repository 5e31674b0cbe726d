"""When to try again: the delivery settings, backoff with full jitter, ``Retry-After``,
and a circuit breaker per partner."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from ..config import Settings

__all__ = ["Breaker", "DeliveryConfig", "backoff", "retry_after"]


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """The delivery settings (docs/configuration.md, delivery_*), in seconds."""

    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    write_timeout: float = 30.0
    pool_timeout: float = 10.0
    request_deadline: float = 120.0  # one request whole (delivery_request_deadline)
    backoff_base: float = 2.0
    backoff_cap: float = 600.0
    max_attempts: int = 20
    max_age: timedelta = timedelta(hours=72)
    breaker_threshold: int = 5
    breaker_cooldown: float = 60.0
    lease: timedelta = timedelta(seconds=300)
    poll: float = 1.0
    # Rows a worker claims at a time: enough to keep it busy between claims, few enough
    # that several workers share a queue (each claimed row waits for its worker).
    batch: int = 10
    # How long a claimed row not begun yet stays the worker's (at most ``lease``): a
    # worker that dies holding a batch delays it this long, not a whole lease. Safe when
    # short: a row is begun only if its claim is still the worker's (Outbox.renew).
    claim_lease: timedelta = timedelta(seconds=30)

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        return cls(
            connect_timeout=settings.delivery_connect_timeout,
            read_timeout=settings.delivery_read_timeout,
            write_timeout=settings.delivery_write_timeout,
            pool_timeout=settings.delivery_pool_timeout,
            request_deadline=settings.delivery_request_deadline,
            backoff_base=settings.delivery_backoff_base,
            backoff_cap=settings.delivery_backoff_cap,
            max_attempts=settings.delivery_max_attempts,
            max_age=timedelta(hours=settings.delivery_max_age_hours),
            breaker_threshold=settings.delivery_breaker_threshold,
            breaker_cooldown=settings.delivery_breaker_cooldown,
            lease=timedelta(seconds=settings.delivery_lease_seconds),
            poll=settings.delivery_poll_seconds,
        )


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry): uniform in
    [0, min(cap, base * 2^(attempt-1))] ("full jitter": many records failing at once
    do not come back at once)."""
    ceiling = min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 62))
    return rng.uniform(0.0, ceiling)


_DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110: 1*DIGIT, ASCII only


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delay-seconds or an HTTP-date; now is
    naive UTC); None when absent or unreadable, 0 for a date already past. An absurd
    value is returned as it is (``inf`` past a float's range): the worker bounds the wait
    by the record's remaining life and the partner's pause by delivery_backoff_cap
    (gateway/delivery/_worker.py ``_failed``, ``_count``)."""
    if not value or not value.strip():
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):  # not str.isdigit: it takes "²" and "٣"
        return float(text) if len(text) < 300 else math.inf
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now.replace(tzinfo=UTC)).total_seconds())


class Breaker:
    """A partner's circuit breaker. ``closed``: requests go; ``threshold`` consecutive
    failures open it. ``open``: no request for ``cooldown`` seconds, then ``half-open``:
    exactly one request (the probe) goes; its success closes it, its failure opens it
    again for another cool-down."""

    def __init__(self, threshold: int, cooldown: float) -> None:
        self.threshold = threshold
        self.cooldown = timedelta(seconds=cooldown)
        self.failures = 0
        self.opened_at: datetime | None = None
        self.probing = False  # the half-open probe is in flight
        # The partner's Retry-After: no request to it before then, whatever the state.
        self.paused_until: datetime | None = None

    def state(self, now: datetime) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if now >= self.opened_at + self.cooldown else "open"

    def pause(self, until: datetime) -> None:
        """The partner asked for no request before ``until`` (Retry-After: it holds for
        every record, not only the one it refused)."""
        if self.paused_until is None or until > self.paused_until:
            self.paused_until = until

    def paused(self, now: datetime) -> bool:
        return self.paused_until is not None and now < self.paused_until

    def may_try(self, now: datetime) -> bool:
        """Whether :meth:`allow` could say yes now (without taking the probe)."""
        if self.paused(now):
            return False
        state = self.state(now)
        return state == "closed" or (state == "half-open" and not self.probing)

    def allow(self, now: datetime) -> bool:
        """May a request go now? In half-open, only the first caller gets a yes."""
        if self.paused(now):
            return False
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.failures, self.opened_at, self.probing = 0, None, False

    def failure(self, now: datetime) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self.opened_at, self.probing = now, False
