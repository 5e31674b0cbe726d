"""Counts and queue figures read from the store at scrape time.

Every process of a deployment (API workers, listeners, delivery workers, on any machine)
writes the same tables, so figures read from them are right however many processes
there are and survive restarts, where counters kept in memory would count one process
since its start.

Gauges (messages by state, the outbox's records not yet final) are read whole at each
reading, from indexes. Counters count rows of tables that only grow (messages,
outcomes, outbox events): a full count of a million messages and their events takes
seconds, so each process counts them once, at its first reading, then reads only the
rows added since (:class:`_Tally`). Ids are handed out before commit, so a row can
become visible after a row with a higher id; rows are therefore read again until they
are :data:`SETTLE` seconds old, and counted once by id.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..store import Store, metadata, utcnow
from ._blocked import CREDENTIALS_CODES, credentials_blocked

__all__ = ["ATTEMPT_OUTCOMES", "DEPTH_STATES", "MIN_INTERVAL", "SETTLE", "StoreCollector"]

log = logging.getLogger("gateway.metrics")

_messages = metadata.tables["messages"]
_outcomes = metadata.tables["outcomes"]
_outbox = metadata.tables["outbox"]
_events = metadata.tables["outbox_events"]

# Outbox rows a delivery worker still has to send (held rows wait for a person: their
# own series, gateway_outbox_records{state="held"}).
DEPTH_STATES = ("pending", "waiting", "sending", "retrying")
OPEN_STATES = (*DEPTH_STATES, "held")  # gateway_outbox_records: the states not final
# A send ends in the state the row moves to from "sending": the attempt's outcome.
ATTEMPT_OUTCOMES = {
    "delivered": "delivered",  # the last part arrived
    "sending": "part-delivered",  # a part arrived, the next one follows
    "retrying": "retry",  # refused for now (5xx, 429, network): sent again later
    "waiting": "ambiguous",  # no answer known (timeout, lease expired): the partner is asked
    "dead": "dead",  # refused for good, or given up
    "held": "held",
}
# Outbox events counted per record: created (from no state), held, delivered, dead,
# discarded (final too: a held or dead record a person gave up on, gateway outbox discard).
_RECORD_EVENTS = {
    "held": "held",
    "delivered": "delivered",
    "dead": "dead",
    "discarded": "discarded",
}
UNKNOWN = "unknown"  # a message whose sender could not be read
# Scrapes closer together than this share one reading of the store: /metrics needs no
# token, and a flood of scrapes must not become a flood of GROUP BYs.
MIN_INTERVAL = 5.0
# A row older than this (by its own time column) is taken to be committed for good: a
# transaction open longer would be missed (docs/deployment.md sets PostgreSQL's
# idle_in_transaction_session_timeout to 60 s).
SETTLE = 120.0


def _label(value: object) -> str:
    return str(value) if value not in (None, "") else UNKNOWN


@dataclass
class _Source:
    """A table that only grows, counted by some of its columns (``labels``)."""

    table: sa.Table
    at: sa.ColumnElement[datetime]  # the row's own time
    labels: tuple[sa.ColumnElement[object], ...]
    joined: sa.FromClause  # the table with what the labels need
    where: sa.ColumnElement[bool] = field(default_factory=sa.true)
    ready: sa.ColumnElement[bool] = field(default_factory=sa.true)  # countable before settled


class _Tally:
    """Counts of a :class:`_Source`'s rows by label, kept up to date by reading only the
    rows after ``low`` (every row up to it is counted; ``counted`` holds the ids above it
    already counted)."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.low: int | None = None
        self.counted: set[int] = set()
        self.counts: Counter[tuple[object, ...]] = Counter()

    def update(self, conn: sa.Connection, settle: datetime) -> Counter[tuple[object, ...]]:
        src, ident = self.source, self.source.table.c.id
        if self.low is None:  # the first reading: the settled history, counted in SQL
            newest = sa.select(ident).where(src.at <= settle).order_by(ident.desc()).limit(1)
            low = int(conn.execute(newest).scalar() or 0)
            grouped = (
                sa.select(*src.labels, sa.func.count())
                .select_from(src.joined)
                .where(src.where, ident <= low)
                .group_by(*src.labels)
            )
            for *labels, count in conn.execute(grouped):
                self.counts[tuple(labels)] += int(count)
            self.low = low
        recent = (
            sa.select(ident, src.at, src.ready, *src.labels)
            .select_from(src.joined)
            .where(src.where, ident > self.low)
            .order_by(ident)
        )
        low, gap = self.low, False
        for ident_, at, ready, *labels in conn.execute(recent):
            if ident_ not in self.counted and (ready or at <= settle):
                self.counted.add(ident_)
                self.counts[tuple(labels)] += 1
            gap = gap or ident_ not in self.counted or at > settle
            if not gap:  # every row up to here is counted and settled
                low = ident_
        self.low = low
        self.counted = {i for i in self.counted if i > low}
        return self.counts


def _sources() -> dict[str, _Source]:
    m, o, e, ob = _messages.c, _outcomes.c, _events.c, _outbox.c
    with_partner = _events.join(_outbox, e.outbox_id == ob.id)
    return {
        # a message is counted once converted (its sender is then known for sure), or
        # once settled if it never is
        "received": _Source(
            _messages, m.received_at, (m.sender, m.channel), _messages, ready=m.state != "received"
        ),
        "conversions": _Source(
            _outcomes,
            o.at,
            (m.sender, o.state),
            _outcomes.join(_messages, o.message_id == m.id),
            where=o.stage == "convert",
        ),
        "events": _Source(
            _events,
            e.at,
            (e.from_state, e.to_state, ob.partner, m.sender),
            with_partner.outerjoin(_messages, ob.message_id == m.id),
        ),
    }


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
        self._tallies = {name: _Tally(source) for name, source in _sources().items()}

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
        now = self._clock()
        settle = now - timedelta(seconds=SETTLE)
        with store.engine.connect() as conn:
            counts = {name: tally.update(conn, settle) for name, tally in self._tallies.items()}
            yield self._message_states(conn)
            yield from self._outbox(conn, now)
        yield _received(counts["received"])
        yield _conversions(counts["conversions"])
        yield _record_events(counts["events"])
        yield _attempts(counts["events"])

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

    def _outbox(self, conn: sa.Connection, now: datetime) -> Iterator[Metric]:
        o = _outbox.c
        rows = conn.execute(
            sa.select(o.partner, o.state, sa.func.count(), sa.func.min(o.created_at))
            .where(o.state.in_(OPEN_STATES))  # by the (state, next_at) index: no full scan
            .group_by(o.partner, o.state)
        ).all()
        records = GaugeMetricFamily(
            "gateway_outbox_records",
            "Outbox records not final yet (pending, waiting, sending, retrying, held) by "
            "partner and state.",
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
        partners = self._partners() | {str(row[0]) for row in rows}
        found = {
            (str(partner), str(state)): (int(count), first) for partner, state, count, first in rows
        }
        for partner in sorted(partners):  # every open state of every partner: 0 when none
            for state in OPEN_STATES:
                records.add_metric([partner, state], found.get((partner, state), (0, None))[0])
        depths: dict[str, int] = dict.fromkeys(partners, 0)
        ages: dict[str, float] = dict.fromkeys(partners, 0.0)
        for (partner, state), (count, first) in found.items():
            if state in DEPTH_STATES:
                depths[partner] += count
                ages[partner] = max(ages[partner], (now - first).total_seconds())
        for partner in sorted(depths):
            depth.add_metric([str(partner)], depths[partner])
            oldest.add_metric([str(partner)], max(ages[partner], 0.0))
        yield records
        yield depth
        yield oldest
        yield self._blocked(conn, partners)

    def _blocked(self, conn: sa.Connection, partners: set[str]) -> Metric:
        """Rows our credentials block (refused, or no token): an alert at the first one,
        not when the queue has aged (docs/alerts.md, credentials_refused)."""
        family = GaugeMetricFamily(
            "gateway_outbox_credentials_blocked",
            "Outbox records held because the partner refused the gateway's credentials "
            "(delivery.credentials-refused) or no token could be had (delivery.token-file, "
            "delivery.token-endpoint; retrying, then held), by partner and code.",
            labels=["partner", "code"],
        )
        found = {
            (str(partner), str(code)): int(count)
            for partner, code, count in conn.execute(credentials_blocked(_outbox))
        }
        for partner in sorted(partners | {p for p, _ in found}):  # 0 when none
            for code in CREDENTIALS_CODES:
                family.add_metric([partner, code], found.get((partner, code), 0))
        return family

    def _partners(self) -> set[str]:
        """Every partner any record was queued for: an empty queue shows as 0, not as
        no series (an alert on the depth must see it fall)."""
        return {str(key[2]) for key in self._tallies["events"].counts}


def _received(counts: Counter[tuple[object, ...]]) -> Metric:
    family = CounterMetricFamily(
        "gateway_messages_received",
        "Messages stored as received (one per MLLP message, API body, DICOM study, "
        "CDA document; a resend of the same bytes is one), by sender and channel.",
        labels=["sender", "channel"],
    )
    for (sender, channel), count in sorted(counts.items(), key=str):
        family.add_metric([_label(sender), _label(channel)], count)
    return family


def _conversions(counts: Counter[tuple[object, ...]]) -> Metric:
    family = CounterMetricFamily(
        "gateway_conversions",
        "Conversions of stored messages by outcome (converted, failed), reprocessing "
        "included, by sender.",
        labels=["sender", "outcome"],
    )
    for (sender, state), count in sorted(counts.items(), key=str):
        family.add_metric([_label(sender), str(state)], count)
    return family


def _record_events(counts: Counter[tuple[object, ...]]) -> Metric:
    """Records queued (an outbox row made), held, delivered, dead and discarded, per sender and
    partner, from the outbox's transition log: a record held twice counts twice."""
    family = CounterMetricFamily(
        "gateway_records",
        "Records put in the outbox (queued), held by the policy or the delivery, "
        "delivered, dead and discarded, by sender and partner.",
        labels=["sender", "partner", "outcome"],
    )
    summed: Counter[tuple[str, str, str]] = Counter()
    for (from_state, to_state, partner, sender), count in counts.items():
        if from_state is None:
            summed[_label(sender), str(partner), "queued"] += count
        if to_state in _RECORD_EVENTS:
            summed[_label(sender), str(partner), _RECORD_EVENTS[str(to_state)]] += count
    for labels, count in sorted(summed.items()):
        family.add_metric(list(labels), count)
    return family


def _attempts(counts: Counter[tuple[object, ...]]) -> Metric:
    family = CounterMetricFamily(
        "gateway_delivery_attempts",
        "Sends to a partner by outcome: delivered, part-delivered, retry, ambiguous, dead, held.",
        labels=["partner", "outcome"],
    )
    summed: Counter[tuple[str, str]] = Counter()
    for (from_state, to_state, partner, _), count in counts.items():
        if from_state == "sending":
            summed[str(partner), ATTEMPT_OUTCOMES.get(str(to_state), str(to_state))] += count
    for labels, count in sorted(summed.items()):
        family.add_metric(list(labels), count)
    return family
