"""/docs and /redoc render in headless Chromium with the network off: the gateway
serves on 127.0.0.1 and every request to another host is refused (and must not be
made at all)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from playwright.sync_api import Page, Route, sync_playwright

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.test_app import TOKEN

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)


@pytest.fixture(scope="module")
def base_url(converter: Converter, settings: Settings) -> Iterator[str]:
    app = create_app(settings, converter, TokenSet([TOKEN]))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):  # up within a few seconds; the loop only waits for it
        if server.started:
            break
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    app.state.reports.shutdown()


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or url.startswith(("data:", "blob:"))


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    outside: list[str] = []
    with sync_playwright() as pw:
        # a fresh profile (user data dir) per test: nothing cached from an earlier run
        context = pw.chromium.launch_persistent_context(
            tmp_path / "profile", executable_path=CHROMIUM, args=FLAGS, headless=True
        )

        def guard(route: Route) -> None:
            url = route.request.url
            if _loopback(url):
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        context.route("**/*", guard)
        yield context.new_page(), outside
        context.close()


def test_swagger_ui_renders_offline_with_the_bearer_scheme(
    base_url: str, page: tuple[Page, list[str]]
) -> None:
    tab, outside = page
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{base_url}/docs", wait_until="networkidle")
    convert = "#operations-default-convert_convert_post"
    tab.wait_for_selector(convert, timeout=30_000)
    text = tab.inner_text("#swagger-ui")
    assert "/report/variants" in text and "/convert" in text
    assert tab.locator("button.authorize").count() == 1
    # Try it out on /convert offers the documented content types and the example
    tab.click(f"{convert} .opblock-summary")
    body = tab.wait_for_selector(".opblock-body .body-param-content-type select")
    assert "x-application/hl7-v2+er7" in body.inner_text()
    assert errors == [] and outside == []


def test_redoc_renders_offline(base_url: str, page: tuple[Page, list[str]]) -> None:
    tab, outside = page
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.goto(f"{base_url}/redoc", wait_until="networkidle")
    tab.wait_for_selector("h1", timeout=30_000)
    text = tab.inner_text("body")
    assert "FHIR gateway" in text and "HTTPBearer" in text
    assert errors == [] and outside == []
