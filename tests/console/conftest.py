"""Console fixtures: a gateway home whose REF^I12 mapping is switched off (the store
browse tests' "bug"), a store with a failed GB 18030 referral and a converted report,
console users of each role, and a client that keeps its cookies (HTTPS: the session
cookie is Secure)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import Settings
from gateway.api import TokenSet, create_app
from gateway.console import Users
from gateway.store import open_store
from tests.store.browse import broken_home, fill

PASSWORD = "correct horse battery"
TOKEN = "console-test-token-0123456789"


@pytest.fixture
def home(tmp_path: Path) -> tuple[Settings, int, int]:
    settings = broken_home(tmp_path, f"sqlite:///{tmp_path / 'gateway.db'}")
    failed, converted = fill(settings)
    store = open_store(settings)
    try:
        users = Users(store)
        users.add("olivia", "operator", PASSWORD)
        users.add("audrey", "auditor", PASSWORD, lang="en")
        users.add("adam", "admin", PASSWORD, lang="zh-Hant-HK")
    finally:
        store.close()
    return settings, failed, converted


@pytest.fixture
def app(home: tuple[Settings, int, int]) -> Iterator[FastAPI]:
    made = create_app(home[0], tokens=TokenSet([TOKEN]))
    yield made
    made.state.messages.close()
    made.state.reports.shutdown()


class Browser:
    """One browser: an httpx client over the ASGI app, keeping its cookies between
    requests, on one event loop of its own."""

    def __init__(self, app: FastAPI) -> None:
        self.loop = asyncio.new_event_loop()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://gw")
        self.cookies = self.http.cookies

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()


_open: list[Browser] = []


@pytest.fixture(autouse=True)
def _close_browsers() -> Iterator[None]:
    yield
    while _open:
        _open.pop().close()


def browser(app: FastAPI) -> Browser:
    made = Browser(app)
    _open.append(made)
    return made


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the page"
    return found.group(1)


def login(client: Browser, name: str, password: str = PASSWORD) -> Browser:
    page = client.get("/console/login")
    answer = client.post(
        "/console/login", data={"name": name, "password": password, "csrf": csrf_of(page.text)}
    )
    assert answer.status_code == 303, answer.text
    return client
