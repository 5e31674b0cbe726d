"""The console under ``gateway serve --workers N``: two apps over the same GATEWAY_HOME
are two API worker processes. A search saved through one is read through the other, and
failed sign-ins counted by both block at the one limit."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from gateway import Settings
from gateway.api import TokenSet, create_app

from .conftest import PASSWORD, TOKEN, browser, csrf_of, login


@pytest.fixture
def other(home: tuple[Settings, int, int]) -> Iterator[FastAPI]:
    """A second worker: another app over the same home and store."""
    made = create_app(home[0], tokens=TokenSet([TOKEN]))
    yield made
    made.state.messages.close()
    made.state.reports.shutdown()


def test_a_search_saved_by_one_worker_is_read_by_another(
    app: FastAPI, other: FastAPI, home: tuple
) -> None:
    failed = home[1]
    first = login(browser(app), "olivia")
    csrf = csrf_of(first.get("/console/messages").text)
    saved = first.post("/console/messages", data={"state": "failed", "csrf": csrf})
    assert saved.status_code == 303
    second = browser(other)
    second.http.cookies = first.http.cookies  # the same browser, its next request elsewhere
    page = second.get(saved.headers["location"])
    assert page.status_code == 200
    assert set(re.findall(r'href="/console/messages/(\d+)"', page.text)) == {str(failed)}
    assert re.search(r'<option value="failed"\s+selected', page.text), "the criteria shown"
    assert f"?q={saved.headers['location'].split('=')[1]}" in page.text  # the link to page 1


def test_another_users_search_id_shows_nothing_of_it(app: FastAPI, other: FastAPI) -> None:
    olivia = login(browser(app), "olivia")
    csrf = csrf_of(olivia.get("/console/messages").text)
    where = olivia.post("/console/messages", data={"state": "failed", "csrf": csrf})
    adam = login(browser(other), "adam")
    page = adam.get(where.headers["location"])
    assert page.status_code == 200
    assert not re.search(r'<option value="failed"\s+selected', page.text)
    assert "?q=" not in page.text  # its id is not carried on either


def test_failed_sign_ins_on_both_workers_block_at_the_one_limit(
    app: FastAPI, other: FastAPI
) -> None:
    workers = [browser(app), browser(other)]
    csrfs = [csrf_of(w.get("/console/login").text) for w in workers]
    for attempt in range(5):  # 3 on the first worker, 2 on the second
        w = attempt % 2
        answer = workers[w].post(
            "/console/login", data={"name": "olivia", "password": "wrong one!", "csrf": csrfs[w]}
        )
        assert answer.status_code == 401
    for w in (0, 1):  # blocked on both, even with the right password
        right = workers[w].post(
            "/console/login", data={"name": "olivia", "password": PASSWORD, "csrf": csrfs[w]}
        )
        assert right.status_code == 429
