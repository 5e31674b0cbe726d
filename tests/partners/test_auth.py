"""Outbound auth against a mocked partner (respx): bearer from a file, SMART Backend
Services (the client assertion decoded and verified with the certificate it carries),
token caching, one refresh after a 401, token endpoint errors, the rate limit."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from joserfc import jwk, jwt
from joserfc.jws import JWSRegistry

from gateway.config import Settings
from gateway.delivery import DeliveryConfig, send_part
from gateway.network import Network
from gateway.partners import (
    ASSERTION_TYPE,
    Auth,
    Partner,
    PartnerAuthError,
    SmartAuth,
    Throttle,
    client_assertion,
    configured_partners,
    jwt_algorithm,
    names_institution,
    partner_client,
)
from gateway.signing import Signer, issue_certificate
from tests.partners.conftest import NETWORK, MakeSettings

BASE = "https://fhir.partner.example.hk/fhir/R4"
FHIR = BASE + "/"  # the client posts to its base URL (base_url + "")
TOKEN_URL = "https://auth.partner.example.hk/token"
BUNDLE = {"resourceType": "Bundle", "type": "transaction", "entry": []}
# A verifier's registry: x5c carries the chain, more than joserfc's default 512-byte header.
REGISTRY = JWSRegistry(algorithms=["ES256", "ES384", "RS384"])
REGISTRY.max_header_length = 16384
ANSWER = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}


@pytest.fixture
def api() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        yield router


def _bearer(token_file: Path) -> Partner:
    return Partner("hkpmc", BASE, auth=Auth("bearer", token_file=token_file))


def _auth_headers(route: respx.Route) -> list[str]:
    return [call.request.headers.get("Authorization", "") for call in route.calls]


# --- bearer ------------------------------------------------------------------------------


def test_bearer_sends_the_file_token_and_rereads_a_changed_file(
    api: respx.MockRouter, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("# issued by the partner\n\nfirst-token\n", encoding="utf-8")
    token_file.chmod(0o600)  # a secret: owner-only, or it is refused
    route = api.post(FHIR).respond(200, json=ANSWER)
    with partner_client(_bearer(token_file), DeliveryConfig()) as client:
        client.post("", json=BUNDLE)
        token_file.write_text("the-rotated-token\n", encoding="utf-8")
        client.post("", json=BUNDLE)
    assert _auth_headers(route) == ["Bearer first-token", "Bearer the-rotated-token"]


def test_bearer_after_a_401_resends_once_only_with_a_new_token(
    api: respx.MockRouter, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old\n", encoding="utf-8")
    token_file.chmod(0o600)
    route = api.post(FHIR).respond(401)
    with partner_client(_bearer(token_file), DeliveryConfig()) as client:
        assert client.post("", json=BUNDLE).status_code == 401
        assert _auth_headers(route) == ["Bearer old"]  # same token: no resend

        def rotate_then_refuse(request: httpx.Request) -> httpx.Response:
            token_file.write_text("rotated-meanwhile\n", encoding="utf-8")
            return httpx.Response(401)

        route.side_effect = [rotate_then_refuse, httpx.Response(200, json=ANSWER)]
        assert client.post("", json=BUNDLE).status_code == 200
    assert _auth_headers(route)[1:] == ["Bearer old", "Bearer rotated-meanwhile"]


def test_a_missing_token_file_fails_before_sending_as_a_retryable_error(
    api: respx.MockRouter, tmp_path: Path
) -> None:
    route = api.post(FHIR).respond(200, json=ANSWER)
    missing = tmp_path / "no-such-token"
    with partner_client(_bearer(missing), DeliveryConfig()) as client:
        with pytest.raises(PartnerAuthError) as caught:
            client.post("", json=BUNDLE)
        assert caught.value.code == "delivery.token-file"
        assert str(missing) in caught.value.issue.message
        # delivery reads it as "nothing was sent": retried with backoff (under its own
        # code), then held, never dead
        answer = send_part(client, BUNDLE, dt.datetime(2026, 6, 1))
    assert (answer.kind, answer.code) == ("retry", "delivery.token-file")
    assert not route.called


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660], ids=oct)
def test_a_token_file_others_can_read_is_refused_before_sending(
    api: respx.MockRouter, tmp_path: Path, mode: int
) -> None:
    """The pseudonym key, the signing keys and the API token file are refused when group
    or others may read them; the partner's bearer token was sent from a 0644 file (anyone
    on the host could send as the gateway). Refused as they are, under the code of a
    token file that cannot be used (retried, then held): nothing is sent."""
    route = api.post(FHIR).respond(200, json=ANSWER)
    token_file = tmp_path / "token"
    token_file.write_text("the-partners-token\n", encoding="utf-8")
    token_file.chmod(mode)
    with partner_client(_bearer(token_file), DeliveryConfig()) as client:
        with pytest.raises(PartnerAuthError) as caught:
            client.post("", json=BUNDLE)
        assert caught.value.code == "delivery.token-file"
        assert caught.value.issue.message == (
            f"partner hkpmc: {token_file}: the partner token file must be private (chmod 600)"
        )
        assert not route.called
        token_file.chmod(0o600)  # the operator fixes it: used at the next request
        assert client.post("", json=BUNDLE).status_code == 200
    assert _auth_headers(route) == ["Bearer the-partners-token"]


def test_bearer_from_an_environment_variable(
    api: respx.MockRouter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HKPMC_TOKEN", "from-the-env")
    route = api.post(FHIR).respond(200, json=ANSWER)
    partner = Partner("hkpmc", BASE, auth=Auth("bearer", token_env="HKPMC_TOKEN"))
    with partner_client(partner, DeliveryConfig()) as client:
        client.post("", json=BUNDLE)
        monkeypatch.delenv("HKPMC_TOKEN")
        with pytest.raises(PartnerAuthError, match="HKPMC_TOKEN holds no token"):
            client.post("", json=BUNDLE)
    assert _auth_headers(route) == ["Bearer from-the-env"]


# --- SMART Backend Services ---------------------------------------------------------------


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _smart(settings: Settings, **auth: Any) -> Partner:
    partner = configured_partners(settings)["hkpmc"]
    smart = replace(partner.auth, type="smart", client_id="lax2", key="lax2", **auth)
    smart = replace(smart, signing_keys=settings.signing_keys)
    return replace(partner, base=BASE, auth=smart)


def _client(partner: Partner, clock: Clock) -> httpx.Client:
    client = partner_client(partner, DeliveryConfig())
    assert isinstance(client.auth, SmartAuth)
    client.auth.clock = clock
    return client


def _token_answer(token: str, expires_in: int = 300) -> httpx.Response:
    body = {"access_token": token, "token_type": "bearer", "expires_in": expires_in}
    return httpx.Response(200, json=body)


def _form(request: httpx.Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.content.decode()).items()}


def _verified(assertion: str, chain_file: Path) -> jwt.Token:
    """The assertion verified with the public key of its own x5c leaf, which must be
    the certificate of the gateway's key file."""
    header = _part(assertion, 0)
    leaf = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    chain = x509.load_pem_x509_certificates(chain_file.read_bytes())
    assert [base64.b64decode(c) for c in header["x5c"]] == [
        c.public_bytes(serialization.Encoding.DER) for c in chain
    ]
    return jwt.decode(assertion, _public(leaf), algorithms=[header["alg"]], registry=REGISTRY)


def _public(cert: x509.Certificate) -> jwk.RSAKey | jwk.ECKey:
    pem = cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(cert.public_key(), rsa.RSAPublicKey):
        return jwk.RSAKey.import_key(pem)
    return jwk.ECKey.import_key(pem)


def _part(compact: str, index: int) -> dict[str, Any]:
    """The decoded header (0) or claims (1) of a compact JWS, unverified."""
    text = compact.split(".")[index]
    found: dict[str, Any] = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    return found


def test_the_client_assertion_is_signed_by_the_gateway_key_with_its_chain(
    api: respx.MockRouter, make_settings: MakeSettings, pki: Path
) -> None:
    clock = Clock(1_780_000_000.0)
    token = api.post(TOKEN_URL).mock(side_effect=[_token_answer("t-1"), _token_answer("t-2")])
    fhir = api.post(FHIR).respond(200, json=ANSWER)
    with _client(_smart(make_settings(), token_url=TOKEN_URL), clock) as client:
        client.post("", json=BUNDLE)
        clock.now += 3600  # the first token has run out
        client.post("", json=BUNDLE)
    assert _auth_headers(fhir) == ["Bearer t-1", "Bearer t-2"]
    forms = [_form(call.request) for call in token.calls]
    jtis = []
    for form in forms:
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == ASSERTION_TYPE
        assert form["scope"] == "system/*.read system/*.write"
        verified = _verified(form["client_assertion"], pki / "lax2" / "cert.pem")
        claims, header = verified.claims, verified.header
        assert claims["iss"] == claims["sub"] == "lax2"
        assert claims["aud"] == TOKEN_URL
        assert 0 < claims["exp"] - claims["iat"] <= 300  # SMART: at most five minutes
        assert header["alg"] == "ES256"  # the demo keys are P-256: the key's algorithm
        signer = Signer.load(pki / "lax2" / "key.pem", pki / "lax2" / "cert.pem")
        assert header["kid"] == signer.kid  # SHA-256 thumbprint of the leaf
        jtis.append(claims["jti"])
    assert claims["iat"] == int(clock.now)
    assert len(set(jtis)) == 2  # every assertion is new


def test_the_token_is_cached_until_shortly_before_it_expires(
    api: respx.MockRouter, make_settings: MakeSettings
) -> None:
    clock = Clock(1_780_000_000.0)
    token = api.post(TOKEN_URL).mock(side_effect=[_token_answer("a", 300), _token_answer("b")])
    fhir = api.post(FHIR).respond(200, json=ANSWER)
    with _client(_smart(make_settings(), token_url=TOKEN_URL), clock) as client:
        for _ in range(3):
            client.post("", json=BUNDLE)
        clock.now += 260  # 40 s left of 300: still used
        client.post("", json=BUNDLE)
        clock.now += 15  # 25 s left: renewed before the partner refuses it
        client.post("", json=BUNDLE)
    assert token.call_count == 2
    assert _auth_headers(fhir) == ["Bearer a"] * 4 + ["Bearer b"]


def test_a_401_gets_one_new_token_and_one_resend_of_the_same_request(
    api: respx.MockRouter, make_settings: MakeSettings
) -> None:
    clock = Clock(1_780_000_000.0)
    token = api.post(TOKEN_URL).mock(
        side_effect=[_token_answer("stale"), _token_answer("fresh"), _token_answer("again")]
    )
    fhir = api.post(FHIR).mock(side_effect=[httpx.Response(401), httpx.Response(200, json=ANSWER)])
    with _client(_smart(make_settings(), token_url=TOKEN_URL), clock) as client:
        assert client.post("", json=BUNDLE).status_code == 200
        assert _auth_headers(fhir) == ["Bearer stale", "Bearer fresh"]
        assert fhir.calls[0].request.content == fhir.calls[1].request.content  # same body
        # Refused again with the new token: no loop, the 401 is the answer.
        fhir.side_effect = None
        fhir.return_value = httpx.Response(401)
        assert client.post("", json=BUNDLE).status_code == 401
    assert token.call_count == 3 and fhir.call_count == 4


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (
            httpx.Response(400, json={"error": "invalid_client", "error_description": "bad kid"}),
            "refused the client assertion (HTTP 400 invalid_client: bad kid)",
        ),
        (httpx.Response(503, text="down"), "refused the client assertion (HTTP 503)"),
        (httpx.Response(200, json={"token_type": "bearer"}), "without a bearer access_token"),
        (
            httpx.Response(200, json={"access_token": "x", "token_type": "mac"}),
            "without a bearer access_token",
        ),
    ],
)
def test_token_endpoint_errors_are_clear_and_nothing_reaches_the_fhir_server(
    api: respx.MockRouter, make_settings: MakeSettings, answer: httpx.Response, words: str
) -> None:
    api.post(TOKEN_URL).mock(return_value=answer)
    fhir = api.post(FHIR).respond(200, json=ANSWER)
    with (
        _client(_smart(make_settings(), token_url=TOKEN_URL), Clock(1e9)) as client,
        pytest.raises(PartnerAuthError) as caught,
    ):
        client.post("", json=BUNDLE)
    assert caught.value.code == "delivery.token-endpoint"
    assert words in caught.value.issue.message and TOKEN_URL in caught.value.issue.message
    assert isinstance(caught.value, httpx.ConnectError)  # delivery: retried, not dead
    assert not fhir.called


def test_the_token_url_is_discovered_once(
    api: respx.MockRouter, make_settings: MakeSettings
) -> None:
    well_known = api.get(f"{BASE}/.well-known/smart-configuration").respond(
        200, json={"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"]}
    )
    token = api.post(TOKEN_URL).mock(side_effect=[_token_answer("a", 60), _token_answer("b")])
    api.post(FHIR).respond(200, json=ANSWER)
    clock = Clock(1e9)
    with _client(_smart(make_settings()), clock) as client:
        client.post("", json=BUNDLE)
        clock.now += 120
        client.post("", json=BUNDLE)
    assert well_known.call_count == 1 and token.call_count == 2
    assertion = _form(token.calls[0].request)["client_assertion"]
    assert _part(assertion, 1)["aud"] == TOKEN_URL  # the discovered URL


def test_no_discoverable_token_url_is_a_clear_error(
    api: respx.MockRouter, make_settings: MakeSettings
) -> None:
    api.get(f"{BASE}/.well-known/smart-configuration").respond(404)
    with (
        _client(_smart(make_settings()), Clock(1e9)) as client,
        pytest.raises(
            PartnerAuthError, match=r"gives no token URL \(HTTP 404\); set auth.token_url"
        ),
    ):
        client.post("", json=BUNDLE)


def test_a_missing_gateway_key_is_named(api: respx.MockRouter, make_settings: MakeSettings) -> None:
    partner = _smart(make_settings(), token_url=TOKEN_URL)
    partner = replace(partner, auth=replace(partner.auth, key="no-such-institution"))
    with _client(partner, Clock(1e9)) as client, pytest.raises(PartnerAuthError) as caught:
        client.post("", json=BUNDLE)
    assert "no key to sign the client assertion" in caught.value.issue.message
    assert "no-such-institution" in caught.value.issue.message


# --- algorithms and names ------------------------------------------------------------------


def _signer(key: Any) -> Signer:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "测试 test")])
    return Signer.from_key(key, [issue_certificate(name, key.public_key(), key)])


@pytest.mark.parametrize(
    ("key", "alg"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RS384"),
        (ec.generate_private_key(ec.SECP256R1()), "ES256"),
    ],
)
def test_smart_algorithms_rs384_for_rsa_else_the_keys_own(key: Any, alg: str) -> None:
    assert jwt_algorithm(key) == alg
    signer = _signer(key)
    assertion = client_assertion(signer, "lax2", TOKEN_URL, 1e9)
    token = jwt.decode(assertion, _public(signer.chain[0]), algorithms=[alg], registry=REGISTRY)
    assert token.header["alg"] == alg and token.claims["aud"] == TOKEN_URL


def test_a_p384_key_would_sign_es384() -> None:
    # The gateway's signing keys are P-256, Ed25519 or RSA today (gateway/signing); a
    # P-384 key gets SMART's ES384 once they take one.
    assert jwt_algorithm(ec.generate_private_key(ec.SECP384R1())) == "ES384"


def test_which_certificates_name_an_institution(pki: Path) -> None:
    network = Network.load(NETWORK)
    lax2, njmu2 = network.institution("lax2"), network.institution("njmu2")
    assert lax2 is not None and njmu2 is not None
    cert = x509.load_pem_x509_certificates((pki / "lax2" / "cert.pem").read_bytes())[0]
    assert names_institution(cert, lax2) and not names_institution(cert, njmu2)
    person = next(p for p in (pki / "njmu2").iterdir() if p.is_dir())
    doctor = x509.load_pem_x509_certificates((person / "cert.pem").read_bytes())[0]
    assert not names_institution(doctor, njmu2)  # a practitioner is not the institution


# --- rate limit ------------------------------------------------------------------------------


def test_the_rate_limit_spaces_requests_evenly() -> None:
    clock = Clock(100.0)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.now += seconds

    throttle = Throttle(4.0, clock, sleep)
    for _ in range(5):
        throttle.wait()
    assert slept == [0.25, 0.25, 0.25, 0.25]
    clock.now += 10  # idle: no burst is saved up beyond the next slot
    throttle.wait()
    assert len(slept) == 4
    Throttle(0, clock, sleep).wait()  # 0: no limit
    assert len(slept) == 4


def test_the_client_carries_pool_size_timeouts_and_rate_limit() -> None:
    partner = Partner("hkpmc", BASE, concurrency=2, rate_limit=3.0)
    config = DeliveryConfig(connect_timeout=1.5, read_timeout=7.0)
    with partner_client(partner, config) as client:
        assert client.timeout.connect == 1.5 and client.timeout.read == 7.0
        assert client.base_url == httpx.URL(BASE + "/")
        throttle = client.auth.throttle  # type: ignore[union-attr]
        assert throttle.rate == 3.0
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 2
