"""What the console's worker processes share, in the store (SQLite, and PostgreSQL when
GATEWAY_TEST_DATABASE_URL names a server): saved searches (per user, expiring, bounded)
and the sign-in limiter's counts (atomic across processes); migration
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
from gateway.console import Users
from gateway.console._searches import Searches
from gateway.console._session import LoginLimiter
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
    with store.engine.connect() as conn:
        counts = conn.execute(sa.select(logins.c.failures)).scalars().all()
    assert counts == [20, 20]


def test_the_migration_creates_exactly_the_shared_tables(store: Store) -> None:
    assert store.revision() == "0009_console_shared"
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
    assert store.revision() == "0009_console_shared"
