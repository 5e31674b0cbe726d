"""A console form holding U+0000 (NUL), on SQLite and on PostgreSQL (when
GATEWAY_TEST_DATABASE_URL names a server): an action's reason was kept as typed, and on
PostgreSQL, whose text holds no NUL, its insert failed (a 500); a search value failed the
look-up. The form is refused (400) naming the field; nothing is kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from gateway.api import TokenSet, create_app
from gateway.console import Users
from gateway.console._tables import actions
from gateway.store import open_store
from tests.store.browse import broken_home, fill
from tests.store.dbs import BACKENDS, database

from .conftest import PASSWORD, TOKEN, browser, csrf_of, login


@pytest.fixture(params=BACKENDS)
def nul_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FastAPI, int]]:
    for url in database(request.param, tmp_path):
        settings = broken_home(tmp_path, url)
        failed, _ = fill(settings)
        store = open_store(settings)
        try:
            Users(store).add("olivia", "operator", PASSWORD)
        finally:
            store.close()
        made = create_app(settings, tokens=TokenSet([TOKEN]))
        try:
            yield made, failed
        finally:
            made.state.messages.close()
            made.state.reports.shutdown()


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/console/messages/{failed}/resolve", "reason", "mapping fixed\0"),
        ("/console/messages", "control_id", "A\0"),
        ("/console/messages", "sender", "LAX2\0"),
    ],
    ids=["reason", "control-id", "sender"],
)
def test_a_form_field_holding_nul_is_refused_naming_it(
    nul_app: tuple[FastAPI, int], path: str, field: str, value: str
) -> None:
    app, failed = nul_app
    client = login(browser(app), "olivia")
    csrf = csrf_of(client.get(f"/console/messages/{failed}").text)
    answer = client.post(path.format(failed=failed), data={field: value, "csrf": csrf})
    assert answer.status_code == 400, answer.text
    assert f"the field &#39;{field}&#39; holds the character U+0000" in answer.text
    store = open_store(app.state.messages.settings)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(actions)).scalar() == 0
    finally:
        store.close()
