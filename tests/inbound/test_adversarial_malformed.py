"""Adversarial review of POST /fhir, malformed input (docs/inbound.md): whatever a partner
sends, the answer is a 4xx OperationOutcome naming the entry and element, never a 500,
and nothing of the Bundle is applied. Each case here was a crash (an AttributeError,
KeyError or TypeError of the gateway) before the fix that goes with it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import PROFILE, sign_bundle
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, counts, partner, signer

POST_PATIENT = {"method": "POST", "url": "Patient"}
PROVENANCE_URL = "urn:uuid:7d3c1b4e-2f55-4a8e-9d41-0c3c8f1a2b11"


def _applied(settings: Settings) -> int:
    return counts(settings)["inbound_resources"]


def _outcome(resp: Any) -> tuple[set[str], list[str]]:
    """(codes, expressions) of an OperationOutcome answer."""
    body = resp.json()
    assert body["resourceType"] == "OperationOutcome", resp.text
    issues = body["issue"]
    codes = {i["details"]["coding"][0]["code"] for i in issues}
    return codes, [x for i in issues for x in i.get("expression") or []]


def _provenance(agent: Any) -> dict[str, Any]:
    return {
        "fullUrl": PROVENANCE_URL,
        "resource": {
            "resourceType": "Provenance",
            "target": [{"reference": "urn:uuid:f5249cb5-65d6-56b3-82ca-87ab2581529c"}],
            "recorded": "2026-06-18T06:30:00Z",
            "agent": agent,
        },
        "request": {"method": "POST", "url": "Provenance"},
    }


def _signed(bundle: dict[str, Any], pki: Path) -> bytes:
    return orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))


@pytest.mark.parametrize(
    ("change", "element"),
    [
        # Bundle.identifier is 0..1: a list of them is read by the sender check first
        (lambda b: b.update(identifier=[b["identifier"]]), "Bundle.identifier"),
        (lambda b: b["entry"].append(_provenance([{"type": "custodian", "who": {}}])),
         "Bundle.entry[10].resource.agent[0].type"),
        (lambda b: b["entry"].append(_provenance(7)), "Bundle.entry[10].resource.agent"),
        (lambda b: b["entry"].append(_provenance(
            [{"type": {"coding": "custodian"}, "who": {"display": "x"}}])),
         "Bundle.entry[10].resource.agent[0].type.coding"),
        (lambda b: b["entry"].append(["not", "an", "entry"]), "Bundle.entry[10]"),
        (lambda b: b["entry"].append({"resource": "Patient", "request": POST_PATIENT}),
         "Bundle.entry[10].resource"),
        (lambda b: b["entry"][2]["resource"].update(identifier=5),
         "Bundle.entry[2].resource.identifier"),
    ],
    ids=["identifier-list", "agent-type-string", "agent-number", "coding-string",
         "entry-list", "resource-string", "patient-identifier-number"],
)  # fmt: skip
def test_a_malformed_bundle_is_a_4xx_naming_the_element(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    change: Any, element: str,
) -> None:  # fmt: skip
    bundle = copy.deepcopy(referral)
    change(bundle)
    resp = client.post("/fhir", content=_signed(bundle, pki), headers=partner(NSCH_TOKEN))
    assert resp.status_code in (400, 422), resp.text
    _, where = _outcome(resp)
    assert any(x == element or x.startswith(element + ".") for x in where), where
    assert _applied(hk_settings) == 0


def test_an_entry_list_that_is_no_list_is_a_4xx(client: Client, hk_settings: Settings) -> None:
    body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": 5})
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code in (400, 422), resp.text
    assert "Bundle.entry" in _outcome(resp)[1]


@pytest.mark.parametrize("signature", [None, [], "AAAA"], ids=["absent", "empty", "string"])
def test_a_signature_provenance_without_its_signature_is_refused_not_a_crash(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path, signature: Any
) -> None:
    # a genuine signature, then a Provenance of the signature profile that holds none:
    # R4 allows Provenance.signature to be absent, the verifier read [0] of it
    signed = sign_bundle(referral, signer(pki, "nsch"), "author")
    extra = _provenance([{"who": {"display": "x"}}])
    extra["resource"]["meta"] = {"profile": [PROFILE]}
    if signature is not None:
        extra["resource"]["signature"] = signature
    signed["entry"].append(extra)
    resp = client.post("/fhir", content=orjson.dumps(signed), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    codes, where = _outcome(resp)
    assert codes & {"signing.malformed", "validation.structure"}, codes
    assert any(x.startswith("Bundle.entry[11]") for x in where), where
    assert _applied(hk_settings) == 0


def _nested(depth: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "http://example.org/ext", "valueString": "x"}
    for _ in range(depth):
        ext = {"url": "http://example.org/ext", "extension": [ext]}
    return ext


@pytest.mark.parametrize("depth", [130, 400], ids=["beyond-orjson-dumps", "near-loads-limit"])
def test_deeply_nested_valid_extensions_are_refused_not_a_crash(
    client: Client, hk_settings: Settings, referral: dict[str, Any], depth: int
) -> None:
    # nested extensions are valid R4 at any depth; orjson reads 1024 levels but writes 254
    bundle = copy.deepcopy(referral)
    marker = {"url": "http://example.org/deep", "valueString": "MARK"}
    bundle["entry"][2]["resource"]["extension"] = [marker]
    deep = b'{"url":"http://example.org/ext","valueString":"x"}'
    for _ in range(depth):
        deep = b'{"url":"http://example.org/ext","extension":[' + deep + b"]}"
    body = orjson.dumps(bundle).replace(orjson.dumps(marker), deep)
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    codes, where = _outcome(resp)
    assert codes == {"inbound.bad-bundle"}
    assert where == ["Bundle.entry[2].resource.extension"]
    assert _applied(hk_settings) == 0


def test_json_nested_beyond_the_parser_is_400(client: Client) -> None:
    body = b'{"resourceType":"Bundle","type":"transaction","entry":' + b"[" * 5000
    resp = client.post("/fhir", content=body + b"]" * 5000 + b"}", headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400
    assert _outcome(resp)[0] == {"inbound.bad-bundle"}


def test_a_meta_profile_that_is_no_list_is_named_not_stored(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # meta.profile is set aside before validation (partners' profiles are not held
    # against them): a string there skipped validation and was stored as sent
    bundle = copy.deepcopy(referral)
    bundle["entry"][9]["resource"]["meta"]["profile"] = "https://example.org/profile"
    resp = client.post("/fhir", content=_signed(bundle, pki), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    assert any(x.startswith("Bundle.entry[9].resource.meta") for x in _outcome(resp)[1])
    assert _applied(hk_settings) == 0


@pytest.mark.parametrize("reference", ["Patient?", "Patient?name=x"], ids=["empty", "by-name"])
def test_a_conditional_reference_the_gateway_cannot_match_names_its_element(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path, reference: str
) -> None:
    bundle = copy.deepcopy(referral)
    bundle["entry"][9]["resource"]["subject"] = {"reference": reference}
    resp = client.post("/fhir", content=_signed(bundle, pki), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    codes, where = _outcome(resp)
    assert codes == {"inbound.bad-condition"}
    assert where == ["Bundle.entry[9].resource.subject"]
    assert _applied(hk_settings) == 0
