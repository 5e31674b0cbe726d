"""What the console's worker processes share, in the store (SQLite, and PostgreSQL when
GATEWAY_TEST_DATABASE_URL names a server): saved searches (per user, expiring, bounded)
and the sign-in limiter's counts (atomic across processes, in a sliding window); migration
0009_console_shared creates exactly their tables and goes back."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import gateway.alerts  # every package's tables join the metadata
import gateway.audit
import gateway.console
import gateway.inbound
import gateway.policy
import gateway.store
from gateway.console import Users, _session
from gateway.console._searches import Searches
from gateway.console._session import LoginLimiter, _hash
from gateway.console._tables import logins, searches
from gateway.store import MessageFilter, Store, metadata, utcnow
from tests.store.dbs import BACKENDS, database

from .conftest import PASSWORD


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database(request.param, tmp_path)


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    opened = Store.open(url)
    yield opened
    opened.close()


def _user(store: Store, name: str) -> int:
    return Users(store).add(name, "operator", PASSWORD).id


def test_a_search_comes_back_to_its_user_only(store: Store, url: str) -> None:
    olivia, adam = _user(store, "olivia"), _user(store, "adam")
    where = MessageFilter(
        state="failed", patient="urn:oid:2.16.840.1.113883.4.1|张伟", since=datetime(2026, 12, 1, 8)
    )
    qid = Searches(store).save(olivia, where)
    worker = Store.open(url)  # another process's own engine
    try:
        assert Searches(worker).get(qid, olivia) == where
        assert Searches(worker).get(qid, adam) is None
        assert Searches(worker).get("unknown", olivia) is None
    finally:
        worker.close()


def test_searches_expire_and_the_oldest_go_beyond_the_cap(store: Store) -> None:
    olivia = _user(store, "olivia")
    saved = Searches(store, cap=3)
    ids = [saved.save(olivia, MessageFilter(sender=f"S{i}")) for i in range(5)]
    with store.engine.begin() as conn:  # the same order of creation, whatever the clock
        for i, qid in enumerate(ids):
            at = utcnow() - timedelta(hours=1) + timedelta(seconds=i)
            conn.execute(searches.update().where(searches.c.id == qid).values(created_at=at))
    saved.save(olivia, MessageFilter(sender="S5"))  # saving trims to the cap
    assert [saved.get(q, olivia) for q in ids[:3]] == [None, None, None]
    assert saved.get(ids[3], olivia) == MessageFilter(sender="S3")
    assert saved.get(ids[4], olivia) == MessageFilter(sender="S4")
    with store.engine.begin() as conn:
        conn.execute(
            searches.update().where(searches.c.id == ids[4]).values(expires_at=datetime(2026, 1, 1))
        )
    assert saved.get(ids[4], olivia) is None


def test_the_limiter_blocks_at_the_limit_and_forgets_a_passed_window(store: Store) -> None:
    limiter = LoginLimiter(store, max_failures=3)
    keys = ("name:olivia", "ip:10.0.0.9")
    for count in (1, 2):
        assert limiter.failed(*keys) == count
        assert not limiter.blocked(*keys)
    assert limiter.failed(*keys) == 3
    assert limiter.blocked("name:olivia") and limiter.blocked("ip:10.0.0.9", "name:other")
    assert not limiter.blocked("name:other")
    with store.engine.begin() as conn:  # the window has passed
        conn.execute(logins.update().values(window_start=datetime(2026, 1, 1)))
    assert not limiter.blocked(*keys)
    assert limiter.failed(*keys) == 1  # a new window
    limiter.succeeded("name:olivia")
    assert limiter.failed("name:olivia") == 1 and limiter.failed("ip:10.0.0.9") == 2


def test_failures_counted_at_once_by_many_processes_are_all_kept(store: Store, url: str) -> None:
    workers = [Store.open(url, upgrade=False) for _ in range(4)]
    start = threading.Barrier(len(workers))

    def fail(worker: Store) -> None:
        limiter = LoginLimiter(worker)
        start.wait()
        for _ in range(5):
            limiter.failed("name:olivia", "ip:10.0.0.9")

    threads = [threading.Thread(target=fail, args=(w,)) for w in workers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for w in workers:
            w.close()
    counters = [_hash("ip:10.0.0.9"), _hash("name:olivia")]
    with store.engine.connect() as conn:
        query = sa.select(logins.c.failures).where(logins.c.key_hash.in_(counters))
        counts = conn.execute(query).scalars().all()
    assert counts == [20, 20]
    assert LoginLimiter(store).blocked("name:olivia")


class _Clock:
    """The store's ``utcnow`` as the limiter reads it, moved by hand (seconds after t0)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.t0 = datetime(2026, 12, 6, 8, 0)
        self.at(0)
        monkeypatch.setattr(_session, "utcnow", lambda: self.now)

    def at(self, seconds: float) -> None:
        self.now = self.t0 + timedelta(seconds=seconds)


def _fail_at(clock: _Clock, limiters: list[LoginLimiter], times: list[float]) -> None:
    """One failure of olivia at each time, by the two workers' limiters in turn."""
    for i, seconds in enumerate(times):
        clock.at(seconds)
        limiters[i % 2].failed("name:olivia")


def test_failures_spread_past_a_fixed_window_still_block(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first failure at 0 s, three more from 250 s: a window fixed at the first
    failure has passed by 310 s and would count that failure as its new first; the last
    300 s hold three failures (250, 280, 310), so a sliding window refuses."""
    clock = _Clock(monkeypatch)
    worker = Store.open(url, upgrade=False)  # another `serve --workers` process
    try:
        limiters = [LoginLimiter(s, max_failures=3, window=300) for s in (store, worker)]
        _fail_at(clock, limiters, [0, 250, 280, 310])
        clock.at(320)
        assert limiters[0].blocked("name:olivia") and limiters[1].blocked("name:olivia")
    finally:
        worker.close()


def test_failures_age_out_of_the_sliding_window_one_by_one(
    store: Store, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocked by failures at 0, 10 and 20 s; at 305 s the first has aged out; one more
    failure at 306 s makes three in the last 300 s again (a window fixed at 0 s would
    start afresh at 306 s); by 321 s only that one is left."""
    clock = _Clock(monkeypatch)
    worker = Store.open(url, upgrade=False)
    try:
        limiters = [LoginLimiter(s, max_failures=3, window=300) for s in (store, worker)]
        _fail_at(clock, limiters, [0, 10, 20])
        assert limiters[1].blocked("name:olivia")
        clock.at(305)
        assert not limiters[0].blocked("name:olivia")
        assert not limiters[1].blocked("name:olivia")
        _fail_at(clock, limiters, [306])
        assert limiters[1].blocked("name:olivia")
        clock.at(321)
        assert not limiters[0].blocked("name:olivia")
        assert limiters[1].failed("name:olivia") == 2  # 306 s and now
    finally:
        worker.close()


def test_the_migration_creates_exactly_the_shared_tables(store: Store) -> None:
    assert store.revision() == "0018_partner_pauses"
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    config = Config()
    config.set_main_option(
        "script_location", str(Path(gateway.store.__file__).parent / "migrations")
    )
    with store.engine.execution_options(write=True).begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008_alerts")
    with store.engine.connect() as conn:
        names = set(conn.dialect.get_table_names(conn))
    assert not {"console_searches", "console_login_failures"} & names
    store.upgrade()
    assert store.revision() == "0018_partner_pauses"
