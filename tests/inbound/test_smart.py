"""SMART Backend Services end to end with the demo PKI: a client assertion signed by the
sending institution's key (x5c chain to the demo CA) buys a short-lived access token
that POST /fhir takes; another institution's key, an expired or far-future assertion,
a wrong audience, a reused jti, a person's certificate are refused. And mTLS at a
reverse proxy."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.inbound import tokens
from gateway.store import open_store
from tests.api.test_app import Client

from .conftest import (
    LOCAL,
    NOTHING,
    TOKEN_URL,
    assertion,
    counts,
    make_home,
    partner,
    token_form,
)


def _token(client: Client, form: dict[str, str]) -> tuple[int, dict[str, str]]:
    resp = client.post("/auth/token", data=form)
    return resp.status_code, resp.json()


def test_smart_configuration_advertises_the_token_endpoint(client: Client) -> None:
    config = client.get("/fhir/.well-known/smart-configuration").json()
    assert config["token_endpoint"] == TOKEN_URL
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert "client_credentials" in config["grant_types_supported"]
    meta = client.get("/fhir/metadata").json()
    uris = meta["rest"][0]["security"]["extension"][0]["extension"]
    assert uris == [{"url": "token", "valueUri": TOKEN_URL}]


def test_token_flow_end_to_end(
    client: Client, hk_settings: Settings, pki: Path, signed_referral: bytes
) -> None:
    status, answer = _token(client, token_form(assertion(pki, "nsch", "nsch")))
    assert status == 200, answer
    assert answer["token_type"] == "bearer" and 0 < int(answer["expires_in"]) <= 300
    assert answer["scope"] == "system/*.write system/*.read"
    token = answer["access_token"]
    resp = client.post("/fhir", content=signed_referral, headers=partner(token))
    assert resp.status_code == 200, resp.text
    # kept hashed: the token itself is nowhere in the database
    store = open_store(hk_settings)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.select(tokens)).all()
    finally:
        store.close()
    assert len(rows) == 1 and rows[0].partner == "nsch"
    assert rows[0].token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(rows)


@pytest.mark.parametrize(
    ("key_of", "client_id", "options", "why"),
    [
        ("njmu2", "nsch", {}, "not the certificate of institution 'nsch'"),
        ("njmu2/xu-jing", "njmu2", {}, "a person's"),
        ("nsch", "nsch", {"exp_in": -120}, "expired"),
        ("nsch", "nsch", {"exp_in": 900}, "more than 5 minutes"),
        ("nsch", "nsch", {"aud": "https://elsewhere.example.hk/auth/token"}, "aud"),
        ("nsch", "nsch", {"sub": "njmu2"}, "iss and sub"),
        ("nsch", "nowhere", {}, "not an institution"),
    ],
    ids=["other-institution-key", "person-cert", "expired", "far-exp", "wrong-aud",
         "sub-differs", "unknown-client"],
)  # fmt: skip
def test_bad_assertions_are_refused(
    client: Client,
    hk_settings: Settings,
    pki: Path,
    signed_referral: bytes,
    key_of: str,
    client_id: str,
    options: dict[str, object],
    why: str,
) -> None:
    status, answer = _token(client, token_form(assertion(pki, key_of, client_id, **options)))  # type: ignore[arg-type]
    assert status == 401 and answer["error"] == "invalid_client"
    assert why in answer["error_description"]
    assert counts(hk_settings)["inbound_tokens"] == 0


def test_a_reused_jti_is_refused(client: Client, pki: Path) -> None:
    jwt = assertion(pki, "nsch", "nsch", jti="jti-许-0001")
    assert _token(client, token_form(jwt))[0] == 200
    status, answer = _token(client, token_form(jwt))
    assert status == 401 and "already used" in answer["error_description"]
    other = assertion(pki, "nsch", "nsch", jti="jti-许-0001")  # same jti, new signature
    assert _token(client, token_form(other))[0] == 401


def test_request_errors(client: Client, pki: Path) -> None:
    good = assertion(pki, "nsch", "nsch")
    assert _token(client, {**token_form(good), "grant_type": "password"})[1]["error"] == (
        "unsupported_grant_type"
    )
    assert _token(client, token_form(good, scope="patient/*.read"))[1]["error"] == "invalid_scope"
    form = {**token_form(good), "client_assertion": "not.a.jws"}
    assert _token(client, form) == (401, _token(client, form)[1])
    tampered = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    assert _token(client, token_form(tampered))[0] == 401


def test_a_read_only_token_cannot_send(
    client: Client, hk_settings: Settings, pki: Path, signed_referral: bytes
) -> None:
    status, answer = _token(client, token_form(assertion(pki, "nsch", "nsch"), "system/*.read"))
    assert status == 200
    resp = client.post("/fhir", content=signed_referral, headers=partner(answer["access_token"]))
    assert resp.status_code == 403
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.scope"
    found = {k: v for k, v in counts(hk_settings).items() if k != "inbound_tokens"}
    assert found == NOTHING


def _proxied(tmp_path: Path, pki: Path, converter: Converter, proxies: str) -> Client:
    settings = make_home(tmp_path / "proxied", pki, "hkpmc", {})
    toml = settings.home / "gateway.toml"
    toml.write_text(
        toml.read_text()
        + f'inbound_mtls_header = "X-SSL-Client-Cert"\ninbound_mtls_proxies = [{proxies}]\n'
    )
    return Client(create_app(Settings.load(home=settings.home, env={}), converter,
                             TokenSet([LOCAL])))  # fmt: skip


def test_mtls_certificate_from_the_trusted_proxy(
    tmp_path: Path, pki: Path, converter: Converter, signed_referral: bytes
) -> None:
    from urllib.parse import quote

    cert = quote((pki / "nsch" / "cert.pem").read_text())
    headers = {"X-SSL-Client-Cert": cert, "Content-Type": "application/fhir+json"}
    trusted = _proxied(tmp_path, pki, converter, '"127.0.0.1"')  # httpx's ASGI client address
    try:
        assert trusted.post("/fhir", content=signed_referral, headers=headers).status_code == 200
        person = quote((pki / "njmu2" / "xu-jing" / "cert.pem").read_text())
        refused = trusted.post(
            "/fhir", content=signed_referral, headers={**headers, "X-SSL-Client-Cert": person}
        )
        assert refused.status_code == 401
    finally:
        trusted.app.state.fhir.close()
    # the same header from an address that is not the proxy is not believed
    untrusted = _proxied(tmp_path / "b", pki, converter, '"10.9.9.9"')
    try:
        assert untrusted.post("/fhir", content=signed_referral, headers=headers).status_code == 401
    finally:
        untrusted.app.state.fhir.close()


def test_discovery_makes_no_url_from_the_host_header(
    tmp_path: Path, pki: Path, converter: Converter
) -> None:
    """Without inbound_public_url, discovery built the token endpoint from the request's
    Host: a forged Host (or a cache keyed without it) pointed partners' assertions and
    the CapabilityStatement at an attacker's server. Now: 503 naming the setting, and a
    CapabilityStatement with no URL and no SMART endpoint; with the setting, its URL
    whatever the Host says."""
    settings = make_home(tmp_path / "hkpmc", pki, "hkpmc", {})
    toml = settings.home / "gateway.toml"
    toml.write_text(toml.read_text().replace('inbound_public_url = "http://gw"\n', ""))
    unset = Settings.load(home=settings.home, env={})
    assert unset.inbound_public_url is None
    evil = {"Host": "attacker.example"}
    app = create_app(unset, converter, TokenSet([LOCAL]))
    try:
        found = Client(app).get("/fhir/.well-known/smart-configuration", headers=evil)
        meta = Client(app).get("/fhir/metadata", headers=evil)
    finally:
        app.state.fhir.close()
    assert found.status_code == 503
    issue = found.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.no-public-url"
    assert "inbound_public_url" in issue["diagnostics"]
    assert meta.status_code == 200
    assert "attacker" not in found.text and "attacker" not in meta.text
    assert "url" not in meta.json()["implementation"]
    assert "extension" not in meta.json()["rest"][0]["security"]

    app = create_app(settings, converter, TokenSet([LOCAL]))  # set: the setting's URL only
    try:
        found = Client(app).get("/fhir/.well-known/smart-configuration", headers=evil)
        meta = Client(app).get("/fhir/metadata", headers=evil)
    finally:
        app.state.fhir.close()
    assert found.json()["token_endpoint"] == TOKEN_URL
    assert "attacker" not in meta.text
