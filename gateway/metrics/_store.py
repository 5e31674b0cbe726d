"""Counts and queue figures read from the store at scrape time.

Every process of a deployment (API workers, listeners, delivery workers, on any machine)
writes the same tables, so figures read from them are right however many processes
there are and survive restarts, where counters kept in memory would count one process
since its start. The queries group by indexed columns and are cheap next to a scrape
interval (docs/metrics.md says what they cost on a million messages).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..store import Store, metadata, utcnow

__all__ = ["ATTEMPT_OUTCOMES", "DEPTH_STATES", "MIN_INTERVAL", "StoreCollector"]

log = logging.getLogger("gateway.metrics")

_messages = metadata.tables["messages"]
_outcomes = metadata.tables["outcomes"]
_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]

# Outbox rows a delivery worker still has to send (held rows wait for a person: their
# own series, gateway_outbox_records{state="held"}).
DEPTH_STATES = ("pending", "waiting", "sending", "retrying")
# A send ends in the state the row moves to from "sending": the attempt's outcome.
ATTEMPT_OUTCOMES = {
    "delivered": "delivered",  # the last part arrived
    "sending": "part-delivered",  # a part arrived, the next one follows
    "retrying": "retry",  # refused for now (5xx, 429, network): sent again later
    "waiting": "ambiguous",  # no answer known (timeout, lease expired): the partner is asked
    "dead": "dead",  # refused for good, or given up
    "held": "held",
}
# Outbox events counted per record: created (from no state), held, delivered, dead.
_RECORD_EVENTS = {"held": "held", "delivered": "delivered", "dead": "dead"}
UNKNOWN = "unknown"  # a message whose sender could not be read
# Scrapes closer together than this share one reading of the store: /metrics needs no
# token, and a flood of scrapes must not become a flood of GROUP BYs.
MIN_INTERVAL = 5.0


def _label(value: object) -> str:
    return str(value) if value not in (None, "") else UNKNOWN


class StoreCollector(Collector):
    """Collects the store's figures when scraped, at most once per ``min_interval``
    seconds (:data:`MIN_INTERVAL`; scrapes in between get the same reading). ``store`` is
    called at each reading (the API opens its store lazily); a store that cannot be read
    gives ``gateway_store_up 0`` and none of the store's series, never a failed scrape."""

    def __init__(
        self,
        store: Callable[[], Store],
        clock: Callable[[], datetime] = utcnow,
        min_interval: float | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._min_interval = MIN_INTERVAL if min_interval is None else min_interval
        self._lock = threading.Lock()  # one reading at a time; the others wait and share it
        self._last: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last[0] >= self._min_interval:
                self._last = (now, self._read())
            families = self._last[1]
        yield from families

    def _read(self) -> list[Metric]:
        started = time.perf_counter()
        try:
            families = list(self._families(self._store()))
        except Exception as exc:  # the database is down: say so, keep the scrape
            log.warning("metrics: the store could not be read: %s", type(exc).__name__)
            families, up = [], 0.0
        else:
            up = 1.0
        head: list[Metric] = [
            GaugeMetricFamily(
                "gateway_store_up", "1 when the scrape could read the store, else 0.", value=up
            ),
            GaugeMetricFamily(
                "gateway_store_scrape_duration_seconds",
                "Time the store's figures took to read at this scrape.",
                value=time.perf_counter() - started,
            ),
        ]
        return head + families

    def _families(self, store: Store) -> Iterator[Metric]:
        with store.engine.connect() as conn:
            yield self._received(conn)
            yield self._conversions(conn)
            yield self._message_states(conn)
            yield from self._outbox(conn)
            yield self._record_events(conn)
            yield self._attempts(conn)

    def _received(self, conn: sa.Connection) -> Metric:
        m = _messages.c
        family = CounterMetricFamily(
            "gateway_messages_received",
            "Messages stored as received (one per MLLP message, API body, DICOM study, "
            "CDA document; a resend of the same bytes is one), by sender and channel.",
            labels=["sender", "channel"],
        )
        rows = conn.execute(
            sa.select(m.sender, m.channel, sa.func.count()).group_by(m.sender, m.channel)
        )
        for sender, channel, count in rows:
            family.add_metric([_label(sender), _label(channel)], int(count))
        return family

    def _conversions(self, conn: sa.Connection) -> Metric:
        o, m = _outcomes.c, _messages.c
        family = CounterMetricFamily(
            "gateway_conversions",
            "Conversions of stored messages by outcome (converted, failed), reprocessing "
            "included, by sender.",
            labels=["sender", "outcome"],
        )
        query = (
            sa.select(m.sender, o.state, sa.func.count())
            .select_from(_outcomes.join(_messages, o.message_id == m.id))
            .where(o.stage == "convert")
            .group_by(m.sender, o.state)
        )
        for sender, state, count in conn.execute(query):
            family.add_metric([_label(sender), str(state)], int(count))
        return family

    def _message_states(self, conn: sa.Connection) -> Metric:
        m = _messages.c
        family = GaugeMetricFamily(
            "gateway_messages",
            "Messages in the store by their current state (received, converted, failed, "
            "queued, held, delivered, dead, ...).",
            labels=["state"],
        )
        for state, count in conn.execute(sa.select(m.state, sa.func.count()).group_by(m.state)):
            family.add_metric([str(state)], int(count))
        return family

    def _outbox(self, conn: sa.Connection) -> Iterator[Metric]:
        o = _outbox.c
        rows = conn.execute(
            sa.select(o.partner, o.state, sa.func.count(), sa.func.min(o.created_at)).group_by(
                o.partner, o.state
            )
        ).all()
        records = GaugeMetricFamily(
            "gateway_outbox_records",
            "Outbox records (one per record and partner) by partner and state.",
            labels=["partner", "state"],
        )
        depth = GaugeMetricFamily(
            "gateway_queue_depth",
            "Outbox records a delivery worker still has to send to the partner (pending, "
            "waiting, sending, retrying; held records are not counted).",
            labels=["partner"],
        )
        oldest = GaugeMetricFamily(
            "gateway_queue_oldest_age_seconds",
            "Age of the oldest record counted in gateway_queue_depth (0 when none).",
            labels=["partner"],
        )
        now = self._clock()
        depths: dict[str, int] = {}
        ages: dict[str, float] = {}
        for partner, state, count, first in rows:
            records.add_metric([str(partner), str(state)], int(count))
            depths.setdefault(partner, 0)
            ages.setdefault(partner, 0.0)
            if state in DEPTH_STATES:
                depths[partner] += int(count)
                ages[partner] = max(ages[partner], (now - first).total_seconds())
        for partner in sorted(depths):
            depth.add_metric([str(partner)], depths[partner])
            oldest.add_metric([str(partner)], max(ages[partner], 0.0))
        yield records
        yield depth
        yield oldest

    def _record_events(self, conn: sa.Connection) -> Metric:
        """Records queued (an outbox row made), held, delivered and dead, per sender and
        partner, counted from the outbox's transition log: a record held twice counts
        twice, as a counter should."""
        e, o, m = _events.c, _outbox.c, _messages.c
        outcome = sa.case(
            (e.from_state.is_(None), "queued"), *((e.to_state == s, s) for s in _RECORD_EVENTS)
        )
        query = (
            sa.select(m.sender, o.partner, outcome, sa.func.count())
            .select_from(
                _events.join(_outbox, e.outbox_id == o.id).outerjoin(
                    _messages, o.message_id == m.id
                )
            )
            .where(sa.or_(e.from_state.is_(None), e.to_state.in_(tuple(_RECORD_EVENTS))))
            .group_by(m.sender, o.partner, outcome)
        )
        family = CounterMetricFamily(
            "gateway_records",
            "Records put in the outbox (queued), held by the policy or the delivery, "
            "delivered and dead, by sender and partner.",
            labels=["sender", "partner", "outcome"],
        )
        for sender, partner, name, count in conn.execute(query):
            family.add_metric([_label(sender), str(partner), str(name)], int(count))
        return family

    def _attempts(self, conn: sa.Connection) -> Metric:
        e, o = _events.c, _outbox.c
        query = (
            sa.select(o.partner, e.to_state, sa.func.count())
            .select_from(_events.join(_outbox, e.outbox_id == o.id))
            .where(e.from_state == "sending")
            .group_by(o.partner, e.to_state)
        )
        family = CounterMetricFamily(
            "gateway_delivery_attempts",
            "Sends to a partner by outcome: delivered, part-delivered, retry, ambiguous, "
            "dead, held.",
            labels=["partner", "outcome"],
        )
        for partner, state, count in conn.execute(query):
            outcome = ATTEMPT_OUTCOMES.get(str(state), str(state))
            family.add_metric([str(partner), outcome], int(count))
        return family
