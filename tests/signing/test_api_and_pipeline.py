"""``POST /$verify`` and what the pipeline calls: ``signer_for`` (signing_rules, keys
from the keys folder or the environment) and ``sign_record_bundle``."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.api import TokenSet, create_app
from gateway.errors import ConfigError
from gateway.signing import Signer, sign_bundle, sign_record_bundle, signer_for, verify_bundle
from gateway.signing._cli import parse_rules
from tests.api.test_app import TOKEN, Client

from .conftest import GOLDEN_COBRANDED, WHEN

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(settings: Settings, pki: Path) -> Iterator[Client]:
    app = create_app(
        dataclasses.replace(settings, signing_trust=pki / "ca"), None, TokenSet([TOKEN])
    )
    yield Client(app)
    app.state.reports.shutdown()


def test_verify_endpoint_lists_both_signatures(client: Client, cosigned: dict[str, Any]) -> None:
    resp = client.post("/$verify", content=orjson.dumps(cosigned), headers=BEARER)
    assert resp.status_code == 200, resp.text
    issues = resp.json()["issue"]
    assert [i["severity"] for i in issues] == ["information", "information"]
    assert "role author" in issues[0]["diagnostics"]
    assert (
        "徐静 XU Jing" in issues[1]["diagnostics"]
        and "role verification" in issues[1]["diagnostics"]
    )


def test_verify_endpoint_refuses_a_changed_bundle(client: Client, cosigned: dict[str, Any]) -> None:
    changed = orjson.loads(orjson.dumps(cosigned))
    changed["entry"][0]["resource"]["name"] = "x"
    resp = client.post("/$verify?format=json", content=orjson.dumps(changed), headers=BEARER)
    assert resp.status_code == 422
    assert resp.json()["ok"] is False
    resp = client.post("/$verify", content=orjson.dumps(changed), headers=BEARER)
    codes = [i["details"]["coding"][0]["code"] for i in resp.json()["issue"]]
    assert codes[0] == "signing.content-changed"


def test_verify_endpoint_needs_a_token(client: Client, cosigned: dict[str, Any]) -> None:
    assert client.post("/$verify", content=orjson.dumps(cosigned)).status_code == 401


def test_signer_for_follows_the_rules(settings: Settings, pki: Path) -> None:
    configured = dataclasses.replace(
        settings,
        signing_keys=pki,
        signing_rules="LAX2/ORU^R01=njmu2/xu-jing; LAX2/*=lax2",
    )
    signer = signer_for(configured, "LAX2", "ORU^R01")
    assert signer is not None and signer.name == "徐静 XU Jing"
    other = signer_for(configured, "lax2", "ADT^A01")
    assert other is not None and other.name == "来安县第二人民医院"
    assert signer_for(configured, "NSCH", "ORU^R01") is None  # no rule: unsigned


def test_signer_from_the_environment(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_LAX2", (pki / "lax2" / "key.pem").read_text())
    monkeypatch.setenv("GATEWAY_SIGNING_CERT_LAX2", (pki / "lax2" / "cert.pem").read_text())
    signer = Signer.from_env("lax2")
    assert signer is not None and signer.name == "来安县第二人民医院"
    assert "PRIVATE" not in repr(signer)  # the key is never in a repr (nor a log line)


def test_bad_rules_are_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_rules("LAX2=lax2")
    assert caught.value.code == "config.signing-rules"


def test_sign_record_bundle_is_the_outbound_hook(lax2: Signer, xu_jing: Signer, trust: Any) -> None:
    signed = sign_record_bundle(GOLDEN_COBRANDED.read_bytes(), lax2, "author", WHEN)
    cosigned = sign_record_bundle(signed, xu_jing, "verification", WHEN)
    report = verify_bundle(orjson.loads(cosigned), trust)
    assert report.ok and [s.role for s in report.signatures] == ["author", "verification"]


def test_the_signature_provenance_is_valid_fhir(cosigned: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.provenance import Provenance

    Bundle.model_validate(cosigned)
    provenance = cosigned["entry"][-1]["resource"]
    Provenance.model_validate(provenance)
    assert provenance["agent"][0]["who"]["reference"].startswith("urn:uuid:")  # the entry
    assert provenance["target"] and all(t["reference"] for t in provenance["target"])


def test_a_document_bundle_excludes_its_id_and_meta(
    golden: dict[str, Any], lax2: Signer, trust: Any
) -> None:
    document = {**golden, "type": "document", "id": "doc-1", "meta": {"versionId": "1"}}
    document["entry"] = [{k: v for k, v in e.items() if k != "request"} for e in golden["entry"]]
    signed = sign_bundle(document, lax2, "author", WHEN)
    moved = {**signed, "id": "doc-2", "meta": {"versionId": "7"}}  # a server reassigned them
    assert verify_bundle(moved, trust).ok
    changed = {**signed, "identifier": {"system": "urn:x", "value": "other"}}
    assert not verify_bundle(changed, trust).ok


def test_the_profile_is_published_and_valid() -> None:
    from fhir.resources.R4B.structuredefinition import StructureDefinition

    from gateway.datafiles import data_dir
    from gateway.signing import PROFILE

    path = data_dir("profiles") / "StructureDefinition-signature-provenance.json"
    definition = StructureDefinition.model_validate(orjson.loads(path.read_bytes()))
    assert definition.url == PROFILE and definition.type == "Provenance"
