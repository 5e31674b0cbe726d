"""/docs and /redoc render in headless Chromium with the network off: the gateway
serves on 127.0.0.1 and every request to another host is refused (and must not be
made at all)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests._browser import browsers, needs_chromium
from tests.api.live import live_server
from tests.api.test_app import TOKEN

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def base_url(converter: Converter, settings: Settings) -> Iterator[str]:
    app = create_app(settings, converter, TokenSet([TOKEN]))
    with live_server(app, settings) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.fixture()
def page(tmp_path: Path) -> Iterator[tuple[Page, list[str]]]:
    """A browser with a fresh profile, and the requests off loopback it was refused."""
    with browsers(tmp_path) as (new, outside):
        yield new(), outside


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
