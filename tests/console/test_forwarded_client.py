"""The console's sign-in limiter behind a TLS proxy: through the app as ``gateway serve``
runs it (``server_config``: uvicorn's proxy-headers middleware with the
``forwarded_allow_ips`` setting), the limiter keys on the client address the proxy
forwards when that proxy is trusted, and ignores X-Forwarded-For from anyone else."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway import Settings
from gateway.api import server_config
from gateway.errors import ConfigError

from .conftest import csrf_of

PROXY = "10.20.30.40"  # the TLS proxy's address, as the gateway sees the connection


def _served(app: FastAPI, settings: Settings) -> Any:
    """The ASGI app uvicorn runs for ``gateway serve`` with these settings."""
    config = server_config(app, settings, port=0)
    config.load()
    return config.loaded_app


def _failures(app: FastAPI, settings: Settings, forwarded_for: list[str]) -> list[int]:
    """One failed sign-in (each under a name of its own, so that only the address key
    counts) from the proxy per forwarded client address: the status of each answer."""

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=_served(app, settings), client=(PROXY, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            statuses = []
            for n, address in enumerate(forwarded_for):
                headers = {"X-Forwarded-For": address}
                page = await client.get("/console/login", headers=headers)
                form = {"name": f"nobody{n}", "password": "wrong", "csrf": csrf_of(page.text)}
                answer = await client.post("/console/login", data=form, headers=headers)
                statuses.append(answer.status_code)
            return statuses

    return asyncio.run(run())


def test_a_trusted_proxys_forwarded_address_is_the_limiters_key(app: FastAPI, home: tuple) -> None:
    settings = dataclasses.replace(home[0], forwarded_allow_ips=("10.20.30.0/24",))
    first, second = "203.0.113.7", "198.51.100.9"
    statuses = _failures(app, settings, [first] * 6 + [second])
    assert statuses[:5] == [401] * 5
    assert statuses[5] == 429  # the sixth from the same client: blocked
    assert statuses[6] == 401  # another client behind the same proxy: not blocked


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    app: FastAPI, home: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = home[0]  # the default: loopback only, and the proxy is not on it
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own variable: not read
    assert settings.forwarded_allow_ips == ("127.0.0.1", "::1")
    statuses = _failures(app, settings, [f"203.0.113.{n}" for n in range(1, 7)])
    # six "different" clients are one peer: the limiter sees the proxy's own address
    assert statuses == [401] * 5 + [429]


def test_the_setting_is_read_and_checked(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text('forwarded_allow_ips = ["10.0.0.5", "fd00::/8"]\n')
    assert Settings.load(home=tmp_path, env={}).forwarded_allow_ips == ("10.0.0.5", "fd00::/8")
    env = {"GATEWAY_FORWARDED_ALLOW_IPS": "192.0.2.1, 192.0.2.0/28"}
    loaded = Settings.load(home=tmp_path, env=env)
    assert loaded.forwarded_allow_ips == ("192.0.2.1", "192.0.2.0/28")
    for bad in ("proxy.local", "10.0.0.1/8", "300.1.1.1"):
        with pytest.raises(ConfigError, match="forwarded_allow_ips"):
            Settings.load(home=tmp_path, env={"GATEWAY_FORWARDED_ALLOW_IPS": bad})
