"""The store's counters are read incrementally (each process counts the history once,
then only new rows): a row that commits after a row with a higher id is still counted,
nothing is counted twice, a message is counted under its sender once converted, and a
second process (a fresh collector) counts the same."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.delivery import Outbox
from gateway.metrics._store import SETTLE, StoreCollector
from gateway.partners import Partner
from gateway.store import Store, metadata, open_store
from tests.delivery.conftest import bundle
from tests.store.dbs import BACKENDS, database

T0 = datetime(2026, 12, 6, 3, 0, 0)
_messages = metadata.tables["messages"]


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _message(store: Store, ident: int, at: datetime, sender: str | None, state: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            _messages.insert().values(
                id=ident,
                received_at=at,
                channel="mllp",
                sender=sender,
                format="hl7v2",
                sha256="0" * 64,
                size=1,
                state=state,
                revision=1,
                flagged=False,
                dedup_key=str(ident),
                updated_at=at,
            )
        )


def _received(collector: StoreCollector) -> dict[str, float]:
    for family in collector.collect():
        if family.name == "gateway_messages_received":
            return {s.labels["sender"]: s.value for s in family.samples}
    raise AssertionError("no gateway_messages_received")


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for url in database(request.param, tmp_path):
        settings = dataclasses.replace(Settings.load(home=tmp_path, env={}), database_url=url)
        opened = open_store(settings)
        yield opened
        opened.close()


def test_late_commits_are_counted_once_and_processes_agree(store: Store) -> None:
    clock = Clock()
    counted = StoreCollector(lambda: store, clock, min_interval=0)
    for ident in (1, 2, 3):  # history: counted in SQL at the first reading
        _message(store, ident, T0 - timedelta(hours=1), "LAX2", "converted")
    assert _received(counted) == {"LAX2": 3}
    _message(store, 5, T0, "NSCH", "converted")
    assert _received(counted) == {"LAX2": 3, "NSCH": 1}
    _message(store, 4, T0 - timedelta(seconds=10), "NSCH", "converted")  # id 4 after id 5
    assert _received(counted) == {"LAX2": 3, "NSCH": 2}
    clock.now = T0 + timedelta(seconds=SETTLE * 2)  # all settled: read past, not again
    assert _received(counted) == {"LAX2": 3, "NSCH": 2}
    assert _received(counted) == {"LAX2": 3, "NSCH": 2}
    # Not converted yet, sender unknown: waits; counted under its sender once converted.
    _message(store, 6, clock.now, None, "received")
    assert _received(counted) == {"LAX2": 3, "NSCH": 2}
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(_messages).where(_messages.c.id == 6).values(sender="LAX2", state="failed")
        )
    assert _received(counted) == {"LAX2": 4, "NSCH": 2}
    # Another process starting now counts the same from the store.
    assert _received(StoreCollector(lambda: store, clock, min_interval=0)) == {
        "LAX2": 4,
        "NSCH": 2,
    }
    # Never converted: counted as unknown once settled, by both.
    _message(store, 7, clock.now, None, "received")
    clock.now += timedelta(seconds=SETTLE + 1)
    assert _received(counted) == {"LAX2": 4, "NSCH": 2, "unknown": 1}
    assert _received(StoreCollector(lambda: store, clock, min_interval=0)) == _received(counted)


def test_a_discarded_record_is_counted_as_such(store: Store) -> None:
    """A held record a person discards leaves gateway_outbox_records (final): it is
    counted among the final outcomes of gateway_records_total, as ``discarded``."""
    clock = Clock()
    outbox = Outbox(store, clock=clock)
    row, _ = outbox.enqueue(Partner("hkpmc", "https://fhir.example.hk/fhir"), bundle("P1", "O1"))
    outbox.move(row, "pending", "held", "held for the test", now=T0, last_error="x.held")
    outbox.discard(row, "never wanted")
    clock.now = T0 + timedelta(seconds=SETTLE * 2)
    counted = StoreCollector(lambda: store, clock, min_interval=0)
    [records] = [f for f in counted.collect() if f.name == "gateway_records"]
    outcomes = {s.labels["outcome"]: s.value for s in records.samples if s.name.endswith("_total")}
    assert outcomes == {"queued": 1, "held": 1, "discarded": 1}
