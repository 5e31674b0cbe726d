"""Delivery inside ``gateway serve``: two threads beside the API and the listeners.

- **outbound**: takes each stored message that converted (the store calls back:
  ``gateway.store.on_converted``) through the outbound path; every
  ``delivery_sweep_seconds`` it also looks for converted messages no route outcome followed
  (the gateway stopped in between, ``gateway messages reprocess`` in another process)
  and decides again the records the policy holds (a consent may have arrived);
- **worker**: the :class:`Deliverer` loop.

``stop`` lets each finish what it holds (the worker its current record: no lease is
left behind) and closes the partners' connections.

Several services may share a store (``gateway work --workers N``, several machines on
one PostgreSQL): the worker's claims keep them apart (gateway/delivery/_outbox.py),
and the sweep runs in one of them at a time (:func:`sweep_lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from ..config import Settings
from ..metrics import configure_tracing
from ..processing import on_converted
from ..store import Store, metadata, utcnow
from ._outbound import Outbound
from ._outbox import Outbox
from ._retry import DeliveryConfig
from ._worker import Deliverer

__all__ = ["FEED_EVERY", "DeliveryService", "sweep_lock", "unrouted"]

log = logging.getLogger("gateway.delivery")
FEED_EVERY = 30.0  # the default of delivery_sweep_seconds: looks for unrouted messages and holds
_messages = metadata.tables["messages"]
_outcomes = metadata.tables["outcomes"]
# The PostgreSQL advisory lock of the outbound sweep (any stable 64-bit number will do).
SWEEP_LOCK = zlib.crc32(b"gateway.delivery.sweep")


@contextlib.contextmanager
def sweep_lock(store: Store) -> Iterator[bool]:
    """Whether this process may sweep now: one process of those sharing ``store`` at a
    time (two sweeps would take the same message through the outbound path at once and
    race on its outbox rows). PostgreSQL: a session advisory lock; SQLite: an exclusive
    ``flock`` on a file beside the database. Never waits: another process sweeping
    means this one skips its turn."""
    if store.dialect == "postgresql":
        with store.engine.connect() as conn:
            got = bool(conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({SWEEP_LOCK})").scalar())
            conn.commit()  # the lock is the session's: no transaction left open meanwhile
            try:
                yield got
            finally:
                if got:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SWEEP_LOCK})")
                    conn.commit()
        return
    database = store.engine.url.database
    if not database or database == ":memory:":  # one process only
        yield True
        return
    with Path(database + ".sweep-lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def unrouted(store: Store, since: datetime | None = None, limit: int = 1000) -> list[int]:
    """Messages received since ``since``, converted (or allowed by the policy), whose
    current conversion no ``route`` outcome followed: the outbound path has not taken
    them yet. Oldest first. (The service looks back ``delivery_max_age_hours`` only: a
    store that predates routing must not send its history, and what is older would be
    too old to deliver anyway.)"""
    m = _messages.c
    conv, route = _outcomes.alias("conv"), _outcomes.alias("route")
    last_convert = (
        sa.select(sa.func.max(conv.c.id))
        .where(conv.c.message_id == m.id, conv.c.stage == "convert")
        .scalar_subquery()
    )
    routed = (
        sa.select(route.c.id)
        .where(route.c.message_id == m.id, route.c.stage == "route", route.c.id > last_convert)
        .exists()
    )
    query = (
        sa.select(m.id)
        .where(
            m.state.in_(("converted", "outbox")),
            m.received_at >= since if since is not None else sa.true(),
            ~routed,
        )
        .order_by(m.id)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        return [int(i) for i in conn.execute(query).scalars()]


class DeliveryService:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        outbound: Outbound | None = None,
        deliverer: Deliverer | None = None,
        feed_every: float | None = None,
    ) -> None:
        configure_tracing(settings)  # so a delivery-only process (gateway work) traces too
        outbox = Outbox(store)
        self.store = store
        self.outbound = outbound or Outbound(settings, store, outbox)
        # The worker follows the partners' files with routing: one watch, one reading.
        watch = self.outbound.partners_watch
        self.deliverer = deliverer or Deliverer(
            outbox,
            self.outbound.partners,
            DeliveryConfig.from_settings(settings),
            audit=self.outbound.audit,
            partners_from=watch.current if watch is not None else None,
            decide=self.outbound.return_known,
        )
        self.feed_every = feed_every if feed_every is not None else settings.delivery_sweep_seconds
        self._stop = threading.Event()
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._unhook: Callable[[], None] | None = None

    def start(self) -> DeliveryService:
        self._unhook = on_converted(self.submit)
        for name, target in (("outbound", self._feed), ("delivery", self._deliver)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def submit(self, message_id: int) -> None:
        self._queue.put(message_id)

    def stop(self, timeout: float = 30.0) -> None:
        if self._unhook is not None:
            self._unhook()
        self._stop.set()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self.deliverer.close()

    def _deliver(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliverer.run(self._stop)
            except Exception:  # the store went away for a moment: try again
                log.exception("delivery worker")
                self._stop.wait(self.deliverer.config.poll)

    def _feed(self) -> None:
        self._sweep()
        while not self._stop.is_set():
            try:
                message_id = self._queue.get(timeout=self.feed_every)
            except queue.Empty:
                self._sweep()
                continue
            if message_id is not None:
                self._one(message_id)

    def _one(self, message_id: int) -> None:
        try:
            self.outbound.process(message_id)
        except Exception:  # the message stays converted: the next sweep tries again
            log.exception("outbound path of message %s", message_id)

    def _sweep(self) -> None:
        try:
            with sweep_lock(self.store) as mine:
                if not mine:
                    return  # another process sweeps: its turn
                since = utcnow() - self.deliverer.config.max_age
                for message_id in unrouted(self.store, since):
                    if self._stop.is_set():
                        return
                    self._one(message_id)
                self.outbound.recheck_held()
        except Exception:
            log.exception("outbound sweep")
