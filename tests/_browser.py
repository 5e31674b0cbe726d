"""Headless Chromium for the browser tests (the console, /docs): Debian's /usr/bin/chromium
driven by Playwright through ``executable_path`` (no browser download), each browser a
fresh profile (its own cookies, nothing cached from an earlier run), and every request
that leaves loopback refused and recorded: the pages must work with the network off."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext, Page, Route, sync_playwright

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
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)"
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or url.startswith(("data:", "blob:"))


@contextmanager
def browsers(profiles: Path) -> Iterator[tuple[Callable[[], Page], list[str]]]:
    """``new()`` opens a new browser (a fresh profile under ``profiles``) and gives its
    page; the list collects the URLs off loopback that were refused (there must be none).
    Every browser is closed on the way out."""
    outside: list[str] = []
    with sync_playwright() as pw:
        contexts: list[BrowserContext] = []

        def guard(route: Route) -> None:
            if loopback(route.request.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        def new() -> Page:
            context = pw.chromium.launch_persistent_context(
                profiles / f"profile-{len(contexts)}",
                executable_path=CHROMIUM,
                args=FLAGS,
                headless=True,
            )
            context.route("**/*", guard)
            contexts.append(context)
            return context.pages[0] if context.pages else context.new_page()

        try:
            yield new, outside
        finally:
            for context in contexts:
                context.close()
