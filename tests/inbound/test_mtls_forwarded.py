"""mTLS at a TLS proxy that is also trusted for X-Forwarded-For (docs/configuration.md,
``forwarded_allow_ips`` and ``inbound_mtls_proxies``): uvicorn's proxy-headers middleware
rewrote ``request.client`` from X-Forwarded-For before the app saw it, so the mTLS check
compared the *partner's* address with ``inbound_mtls_proxies`` and ignored the
certificate header of a proxy listed in both; and a forwarder trusted for X-Forwarded-For
only could name the mTLS proxy's address in it and have its certificate header believed.
Now (gateway/api/_server.py): the mTLS check sees the TCP peer, while the console's
sign-in limiter still keys on the forwarded client. Both through the ASGI app uvicorn
runs for ``gateway serve`` (``server_config``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app, server_config
from tests.console.conftest import csrf_of

from .conftest import make_home

PROXY = "10.20.30.40"  # the TLS proxy: it verifies client certificates and forwards
FORWARDER = "10.20.30.50"  # a load balancer trusted for X-Forwarded-For only
PARTNER = "203.0.113.7"  # NSCH's gateway, as the proxy forwards it


@pytest.fixture
def served(tmp_path: Path, pki: Path, converter: Converter) -> Any:
    """HKPMC's gateway as ``gateway serve`` runs it, with the proxy in both settings."""
    settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {})
    toml = settings.home / "gateway.toml"
    toml.write_text(
        toml.read_text()
        + 'inbound_mtls_header = "X-SSL-Client-Cert"\n'
        + f'inbound_mtls_proxies = ["{PROXY}"]\n'
        + f'forwarded_allow_ips = ["{PROXY}", "{FORWARDER}"]\n'
    )
    settings = Settings.load(home=settings.home, env={})
    app = create_app(settings, converter, TokenSet(["local-token-0123456789"]))
    config = server_config(app, settings, port=0)
    config.load()
    yield config.loaded_app
    app.state.fhir.close()
    app.state.messages.close()


def _run(app: Any, peer: str, calls: Any) -> Any:
    async def go() -> Any:
        transport = httpx.ASGITransport(app=app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="https://gw") as client:
            return await calls(client)

    return asyncio.run(go())


def _sign_ins(app: Any, forwarded_for: list[str]) -> list[int]:
    """A failed console sign-in through the proxy per forwarded address (each under a
    name of its own: only the address key counts); each answer's status."""

    async def calls(client: httpx.AsyncClient) -> list[int]:
        statuses = []
        for n, address in enumerate(forwarded_for):
            headers = {"X-Forwarded-For": address}
            page = await client.get("/console/login", headers=headers)
            form = {"name": f"nobody{n}", "password": "wrong", "csrf": csrf_of(page.text)}
            answer = await client.post("/console/login", data=form, headers=headers)
            statuses.append(answer.status_code)
        return statuses

    return list(_run(app, PROXY, calls))


def _send(app: Any, peer: str, body: bytes, pki: Path, forwarded_for: str) -> int:
    headers = {
        "X-SSL-Client-Cert": quote((pki / "nsch" / "cert.pem").read_text()),
        "X-Forwarded-For": forwarded_for,
        "Content-Type": "application/fhir+json",
    }

    async def calls(client: httpx.AsyncClient) -> int:
        return (await client.post("/fhir", content=body, headers=headers)).status_code

    return int(_run(app, peer, calls))


def test_the_proxys_certificate_is_believed_and_the_limiter_sees_forwarded_clients(
    served: Any, pki: Path, signed_referral: bytes
) -> None:
    # the mTLS check sees the proxy holding the connection, not the partner it forwards
    assert _send(served, PROXY, signed_referral, pki, PARTNER) == 200
    # and the limiter, in the same app, the forwarded clients: six failures from one
    # block it, another client behind the same proxy is not blocked
    statuses = _sign_ins(served, [PARTNER] * 6 + ["198.51.100.9"])
    assert statuses == [401] * 5 + [429, 401]


def test_a_forwarded_proxy_address_is_not_the_proxy(
    served: Any, pki: Path, signed_referral: bytes
) -> None:
    # a forwarder trusted for X-Forwarded-For only names the mTLS proxy in it: its
    # certificate header is still not believed (the connection is not the proxy's)
    assert _send(served, FORWARDER, signed_referral, pki, PROXY) == 401
    assert _send(served, PARTNER, signed_referral, pki, PROXY) == 401  # nor anyone's
