"""Adversarial review of POST /fhir and /auth/token: what arrives around the Bundle.
A body over max_bundle_bytes (declared or streamed) is 413 before it is kept; a body
that says it is not JSON is 415 (it was parsed as JSON anyway); a SMART access token
past its expiry is 401; a client assertion whose exp is beyond the calendar is an
invalid_client answer (it was a 500)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import ECKey

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.errors import ConfigError
from gateway.inbound import tokens
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import (
    LOCAL,
    NOTHING,
    NSCH_TOKEN,
    TOKEN_URL,
    assertion,
    counts,
    make_home,
    partner,
    signer,
    token_form,
)


def _stored(settings: Settings) -> dict[str, int]:
    return {k: v for k, v in counts(settings).items() if k in NOTHING}


@pytest.fixture
def small(tmp_path: Path, pki: Path, converter: Converter) -> Iterator[tuple[Client, Settings]]:
    """A receiving gateway that takes Bundles of at most 50,000 bytes."""
    settings = make_home(tmp_path / "small", pki, "hkpmc", {"nsch": NSCH_TOKEN})
    toml = settings.home / "gateway.toml"
    toml.write_text(toml.read_text() + "max_bundle_bytes = 50000\n")
    settings = Settings.load(home=settings.home, env={})
    app = create_app(settings, converter, TokenSet([LOCAL]))
    yield Client(app), settings
    app.state.fhir.close()


def test_an_oversized_body_is_413_and_nothing_is_kept(
    small: tuple[Client, Settings], signed_referral: bytes
) -> None:
    client, settings = small
    body = signed_referral + b" " * 50_000  # valid JSON, too large
    declared = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for n in range(0, len(body), 8192):
            yield body[n : n + 8192]

    streamed = client.post("/fhir", content=chunks(), headers=partner(NSCH_TOKEN))
    assert streamed.status_code == 413
    assert _stored(settings) == NOTHING  # not even as refused evidence


@pytest.mark.parametrize(
    "media",
    ["text/plain", "application/x-www-form-urlencoded", "application/fhir+xml",
     "multipart/form-data; boundary=x"],
)  # fmt: skip
def test_a_body_that_is_not_said_to_be_json_is_415(
    client: Client, hk_settings: Settings, signed_referral: bytes, media: str
) -> None:
    headers = {**partner(NSCH_TOKEN), "Content-Type": media}
    resp = client.post("/fhir", content=signed_referral, headers=headers)
    assert resp.status_code == 415, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.media-type"
    assert _stored(hk_settings) == NOTHING


@pytest.mark.parametrize(
    "media", ["application/fhir+json; fhirVersion=4.0", "application/json; charset=utf-8", None]
)
def test_json_media_types_are_taken(
    client: Client, signed_referral: bytes, media: str | None
) -> None:
    headers = {"Authorization": f"Bearer {NSCH_TOKEN}"}
    if media is not None:
        headers["Content-Type"] = media
    assert client.post("/fhir", content=signed_referral, headers=headers).status_code == 200


def test_an_expired_access_token_is_401(
    client: Client, hk_settings: Settings, pki: Path, signed_referral: bytes
) -> None:
    issued = client.post("/auth/token", data=token_form(assertion(pki, "nsch", "nsch")))
    token = issued.json()["access_token"]
    store = open_store(hk_settings)
    try:
        with store.engine.begin() as conn:  # its expiry passes
            conn.execute(sa.update(tokens).values(expires_at=sa.func.datetime("now", "-1 second")))
    finally:
        store.close()
    resp = client.post("/fhir", content=signed_referral, headers=partner(token))
    assert resp.status_code == 401
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.unauthorized"


@pytest.mark.parametrize("exp", [10**12, float("inf")], ids=["year-33658", "infinity"])
def test_a_client_assertion_beyond_the_calendar_is_invalid_client(
    client: Client, pki: Path, exp: Any
) -> None:
    who = signer(pki, "nsch")
    key = ECKey.import_key((pki / "nsch" / "key.pem").read_bytes())
    claims = {"iss": "nsch", "sub": "nsch", "aud": TOKEN_URL, "exp": exp,
              "iat": int(time.time()), "jti": str(uuid.uuid4())}  # fmt: skip
    header = {"alg": "ES256", "typ": "JWT", "kid": who.kid, "x5c": list(who.x5c)}
    resp = client.post("/auth/token", data=token_form(jwt.encode(header, claims, key)))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"


def test_an_assertion_made_for_another_server_is_refused(client: Client, pki: Path) -> None:
    # NSCH's assertion for NJMU2's token endpoint (behind a TLS proxy the scheme is the
    # proxy's X-Forwarded-Proto; the in-process client has none: http), replayed here by
    # a partner that received it, with NJMU2's Host: the audience is inbound_public_url's
    other = "http://fhir.njmu2.example.cn/auth/token"
    jwt_for_other = assertion(pki, "nsch", "nsch", aud=other)
    resp = client.post(
        "/auth/token", data=token_form(jwt_for_other), headers={"Host": "fhir.njmu2.example.cn"}
    )
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_client"
    assert TOKEN_URL in resp.json()["error_description"]


def test_without_a_public_url_no_assertion_is_taken_from_the_host(
    tmp_path: Path, pki: Path, converter: Converter
) -> None:
    """Without inbound_public_url the token URL was the request's own (its Host): the
    replay above succeeded. Now every assertion is refused, saying which setting."""
    settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN})
    toml = settings.home / "gateway.toml"
    toml.write_text(toml.read_text().replace('inbound_public_url = "http://gw"\n', ""))
    settings = Settings.load(home=settings.home, env={})
    assert settings.inbound_public_url is None
    app = create_app(settings, converter, TokenSet([LOCAL]))
    try:
        client = Client(app)
        for host, aud in [("fhir.njmu2.example.cn", "http://fhir.njmu2.example.cn/auth/token"),
                          ("gw", TOKEN_URL)]:  # fmt: skip
            jwt_for = assertion(pki, "nsch", "nsch", aud=aud)
            resp = client.post("/auth/token", data=token_form(jwt_for), headers={"Host": host})
            assert resp.status_code == 401, resp.text
            assert resp.json()["error"] == "invalid_client"
            assert "inbound_public_url" in resp.json()["error_description"]
        assert counts(settings)["inbound_tokens"] == 0
    finally:
        app.state.fhir.close()


@pytest.mark.parametrize("url", ["gw.hkpmc.example.hk", "/fhir", "ftp://gw.hkpmc.example.hk"])
def test_a_public_url_that_is_no_http_url_is_a_config_error(tmp_path: Path, url: str) -> None:
    (tmp_path / "gateway.toml").write_text(f'inbound_public_url = "{url}"\n')
    with pytest.raises(ConfigError, match="inbound_public_url must be the http"):
        Settings.load(home=tmp_path, env={})
