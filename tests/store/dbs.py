"""The databases the store tests run on: SQLite always, PostgreSQL when
GATEWAY_TEST_DATABASE_URL names a server (.ci/run starts one), each test in a schema of
its own that is dropped afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway.store import Store

PG_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"]
SKIP_PG = (
    "PostgreSQL not tested: GATEWAY_TEST_DATABASE_URL is not set "
    "(.ci/run starts a throwaway server and sets it)"
)


def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A URL for an empty database of ``backend``."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'gateway.db'}"
        return
    if not PG_URL:
        pytest.skip(SKIP_PG)
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.dispose()


def opened_store(backend: str, tmp_path: Path) -> Iterator[Store]:
    """A Store on an empty database of ``backend`` (see :func:`database`), closed after."""
    for url in database(backend, tmp_path):
        store = Store.open(url)
        yield store
        store.close()
