"""The inbound routes on the API (gateway/api/_fhir.py): registered by create_app,
discovery open as a FHIR server's is, everything else behind the right credentials —
partners' for POST /fhir (never the local API token), the local API token for reads
and referral status. The flows themselves are tested in tests/inbound/."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.test_app import Client

TOKEN = "local-token-0123456789"


@pytest.fixture
def client(tmp_path_factory: pytest.TempPathFactory, converter: Converter) -> Iterator[Client]:
    home = tmp_path_factory.mktemp("fhir-home")
    (home / "gateway.toml").write_text('institution = "hkpmc"\n')
    app = create_app(Settings.load(home=home, env={}), converter, TokenSet([TOKEN]))
    yield Client(app)
    app.state.fhir.close()


def test_discovery_is_open(client: Client) -> None:
    config = client.get("/fhir/.well-known/smart-configuration")
    # inbound_public_url unset: no token endpoint made from the Host (tests/inbound/test_smart.py)
    assert config.status_code == 503
    meta = client.get("/fhir/metadata")
    assert meta.headers["content-type"] == "application/fhir+json"
    assert meta.json()["rest"][0]["interaction"] == [{"code": "transaction"}, {"code": "batch"}]


def test_the_local_api_token_reads_but_never_sends(client: Client) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/fhir/Task", headers=auth).json()["type"] == "searchset"
    sent = client.post("/fhir", content=b'{"resourceType":"Bundle","type":"transaction"}',
                       headers=auth)  # fmt: skip
    assert sent.status_code == 401
    assert sent.json()["issue"][0]["code"] == "login"
    assert "Bearer" in sent.headers["www-authenticate"]


def test_partner_routes_refuse_without_credentials(client: Client) -> None:
    assert client.get("/fhir/Task/x").status_code == 401
    assert client.post("/fhir/Task/x/$accept").status_code == 401
    token = client.post("/auth/token", data={"grant_type": "client_credentials"})
    assert token.status_code == 400 and token.json()["error"] == "invalid_request"
    assert token.headers["cache-control"] == "no-store"


def test_no_trust_store_means_no_smart_tokens(client: Client) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": "a.b.c",
        "scope": "system/*.write",
    }
    resp = client.post("/auth/token", data=form)
    assert resp.status_code == 401 and resp.json()["error"] == "invalid_client"


# Types /fhir does not announce: FHIR R4 ones (the referral's Encounter, a Binary, the
# consents of the API's root), a misspelt one, a lower-case one and no type name at all.
UNANNOUNCED = ("Encounter", "Binary", "Consent", "Bundle", "Patients", "patient", "Pa$tient")
FORMS = {"patient": "'AAAAAAA'", "Pa$tient": "'AA$AAAAA'"}


def test_fhir_serves_the_types_it_announces_and_no_other(client: Client) -> None:
    """GET /fhir/{type}[/{id}] answers each type GET /fhir/metadata announces (a
    searchset, a 404 not-found for an id not stored) and nothing else: another type is
    404 with an OperationOutcome not-supported naming it (as HAPI answers), not an empty
    searchset; after the credentials, which come first (401)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    meta = client.get("/fhir/metadata").json()
    announced = {r["type"] for r in meta["rest"][0]["resource"]} - {"AuditEvent"}
    assert {"Patient", "Practitioner", "Organization", "Task"} <= announced
    for rtype in sorted(announced):
        found = client.get(f"/fhir/{rtype}?_count=1", headers=auth)
        assert found.status_code == 200 and found.json()["type"] == "searchset", rtype
        missing = client.get(f"/fhir/{rtype}/no-such-id", headers=auth)
        code = missing.json()["issue"][0]["details"]["coding"][0]["code"]
        assert missing.status_code == 404 and code == "inbound.not-found", rtype
    for rtype in UNANNOUNCED:
        for path in (f"/fhir/{rtype}", f"/fhir/{rtype}?_count=1", f"/fhir/{rtype}/an-id"):
            resp = client.get(path, headers=auth)
            assert resp.status_code == 404, path
            assert resp.headers["content-type"] == "application/fhir+json"
            issue = resp.json()["issue"][0]
            assert issue["code"] == "not-supported", path
            assert issue["details"]["coding"][0]["code"] == "inbound.unsupported-type"
            named = FORMS.get(rtype, repr(rtype))  # no type name: its form only
            assert f"resource type {named} " in issue["details"]["text"], (path, issue)
            assert client.get(path).status_code == 401  # no credentials: nothing more
