"""The counters' joinable read on a PostgreSQL database whose default collation is not
bytewise (ICU en-US, as a cluster made with an en_US locale or ICU has): the key range
of a system's tag (``tag:`` up to ``tag;``) still finds that system's rows, so an
individual holding another value of the system is left out as on SQLite. (Under en-US
``;`` sorts before ``:``: compared in the column's collation the range is empty, and the
filter silently kept every holder.)"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from gateway.policy import _records
from gateway.policy._records import PolicyRecords
from gateway.store import Store
from tests.store.dbs import PG_URL, SKIP_PG

WHERE = {"year": 2026, "sender": "lax2", "basis": "national-standard-contract", "category": "s"}
MRN, HKID = "0a1b2c3d", "9f8e7d6c"  # two systems' tags (system_tag: 8 hex digits)


@pytest.fixture
def icu_store() -> Iterator[Store]:
    """A store in a database of its own whose default collation is ICU's en-US."""
    if not PG_URL:
        pytest.skip(SKIP_PG)
    name = f"t_icu_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            try:
                conn.exec_driver_sql(
                    f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' "
                    "LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                )
            except sa.exc.DBAPIError as exc:  # before PostgreSQL 15, or built without ICU
                pytest.skip(f"no ICU database on this server: {exc.orig}")
        store = Store.open(sa.make_url(PG_URL).set(database=name).render_as_string(False))
        try:
            yield store
        finally:
            store.close()
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def test_the_tag_range_finds_its_rows_under_icu(icu_store: Store) -> None:
    with icu_store.engine.begin() as conn:
        # The premise: this database does not order text by bytes.
        assert conn.execute(sa.text("SELECT 'x:' < 'x;'")).scalar_one() is False
        # Counted already: one who shares the record's HKID but has another MRN (a
        # conflict: never joined with it), and one who has the record's MRN.
        apart = [f"{MRN}:m-other", f"{HKID}:h-shared"]
        same = [f"{MRN}:m-record"]
        PolicyRecords._count_people(conn, WHERE, [apart])
        PolicyRecords._count_people(conn, WHERE, [same])
        ids = {
            r.person: r.individual
            for r in conn.execute(
                sa.select(_records.counters.c.person, _records.counters.c.individual)
            )
        }
        people = [[f"{MRN}:m-record", f"{HKID}:h-shared"]]
        persons = sorted({x for p in people[0] for x in (p, _records._bare(p))})
        rows = _records._joinable(conn, WHERE, people, persons)
        assert rows is not None
        # Only the one it may join is read: the MRN range found the other's MRN row.
        assert {r.individual for r in rows} == {ids[same[0]]}
        # And the count is the one reading every holder gives: joined with the second,
        # kept apart from the first (two individuals, nothing merged).
        assert PolicyRecords._count_people(conn, WHERE, people) == 0
        assert conn.execute(_records._COUNT, WHERE).scalar_one() == 2
