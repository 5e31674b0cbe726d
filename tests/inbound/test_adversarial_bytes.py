"""Adversarial review of POST /fhir: a signature over other bytes than the ones kept.
What is verified, stored and kept as evidence must be one Bundle: JSON that two
readers can read differently (a member name twice) is refused; text that only looks
the same (another Unicode normalisation) fails its signature; the same JSON value in
other bytes (keys re-ordered, whitespace) is the same Bundle, answered once; an older
Bundle replayed after a newer one changes nothing."""

from __future__ import annotations

import copy
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, NSCH_TOKEN, REFERRAL_SYSTEM, counts, partner, signer


def _codes(resp: Any) -> set[str]:
    return {i["details"]["coding"][0]["code"] for i in resp.json()["issue"]}


@pytest.mark.parametrize(
    ("first", "then", "element"),
    [
        # the ServiceRequest (entry 9) says revoked to a first-wins reader, active to the
        # gateway's last-wins parser, and the signature covers what the gateway read
        (b'"status":"active"', b'"status":"revoked","status":"active"',
         "Bundle.entry[9].resource.status"),
        (b'"type":"transaction"', b'"type":"batch","type":"transaction"', "Bundle.type"),
        (b'"value":"0098765"', b'"value":"0012345","value":"0098765"',
         "Bundle.entry[2].resource.identifier"),
    ],
    ids=["resource-status", "bundle-type", "patient-identifier"],
)  # fmt: skip
def test_a_member_name_twice_is_refused(
    client: Client, hk_settings: Settings, signed_referral: bytes,
    first: bytes, then: bytes, element: str,
) -> None:  # fmt: skip
    assert first in signed_referral
    body = signed_referral.replace(first, then, 1)
    assert orjson.loads(body) == orjson.loads(signed_referral)  # what orjson reads: the same
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    assert _codes(resp) == {"inbound.bad-bundle"}
    assert resp.json()["issue"][0]["expression"] == [element]
    assert counts(hk_settings)["inbound_resources"] == 0


def test_another_unicode_normalisation_fails_the_signature(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    # "Nguyễn" written composed (NFC) when signed, decomposed (NFD) when sent: it looks
    # the same, the code points differ, so the signature does not hold
    bundle = copy.deepcopy(referral)
    bundle["entry"][2]["resource"]["name"][0]["text"] = unicodedata.normalize("NFC", "Nguyễn")
    signed = sign_bundle(bundle, signer(pki, "nsch"), "author")
    signed["entry"][2]["resource"]["name"][0]["text"] = unicodedata.normalize("NFD", "Nguyễn")
    resp = client.post("/fhir", content=orjson.dumps(signed), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    assert _codes(resp) == {"signing.content-changed"}
    assert counts(hk_settings)["inbound_resources"] == 0


def test_the_same_bundle_in_other_bytes_is_one_bundle_answered_once(
    client: Client, hk_settings: Settings, signed_referral: bytes
) -> None:
    first = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert first.status_code == 200
    stored = counts(hk_settings)

    # every key in reverse order, indented: the canonical JSON (RFC 8785) is the same
    def reverse(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: reverse(node[k]) for k in reversed(list(node))}
        return [reverse(v) for v in node] if isinstance(node, list) else node

    other = orjson.dumps(reverse(orjson.loads(signed_referral)), option=orjson.OPT_INDENT_2)
    assert other != signed_referral
    again = client.post("/fhir", content=other, headers=partner(NSCH_TOKEN))
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert counts(hk_settings) == stored


def test_an_older_bundle_replayed_after_a_newer_one_changes_nothing(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    nsch = signer(pki, "nsch")
    older = orjson.dumps(sign_bundle(referral, nsch, "author"))
    newer = copy.deepcopy(referral)
    newer["identifier"]["value"] = "NSCH20260620090000002"
    newer["entry"][9]["resource"]["status"] = "revoked"  # REF^I14: cancelled
    assert client.post("/fhir", content=older, headers=partner(NSCH_TOKEN)).status_code == 200
    body = orjson.dumps(sign_bundle(newer, nsch, "author"))
    assert client.post("/fhir", content=body, headers=partner(NSCH_TOKEN)).status_code == 200
    replay = client.post("/fhir", content=older, headers=partner(NSCH_TOKEN))
    assert replay.status_code == 200
    query = f"/fhir/ServiceRequest?identifier={REFERRAL_SYSTEM}|REF20260618001"
    sr = client.get(query, headers=LOCAL_AUTH).json()["entry"][0]["resource"]
    assert sr["status"] == "revoked" and sr["meta"]["versionId"] == "2"
    task = client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"][0]["resource"]
    assert task["status"] == "cancelled"


@pytest.mark.parametrize(
    ("first", "then", "element"),
    [
        (b'"value":"0098765"', b'"value":"0098765\\u0000"', "Bundle.entry[2].resource.identifier"),
        (b'"status":"active"', b'"status":"active","note\\u0000":"x"', "Bundle.entry[9].resource"),
    ],
    ids=["identifier-value", "member-name"],
)
def test_a_nul_character_is_refused_naming_its_element(
    client: Client, hk_settings: Settings, signed_referral: bytes,
    first: bytes, then: bytes, element: str,
) -> None:  # fmt: skip
    """U+0000 is no FHIR text, and PostgreSQL's text cannot hold it: an identifier
    value holding one was a 500 (the store's insert failed) on PostgreSQL."""
    assert first in signed_referral
    resp = client.post(
        "/fhir", content=signed_referral.replace(first, then, 1), headers=partner(NSCH_TOKEN)
    )
    assert resp.status_code == 400, resp.text
    assert _codes(resp) == {"inbound.bad-bundle"}
    assert resp.json()["issue"][0]["expression"] == [element]
    assert "U+0000" in resp.json()["issue"][0]["diagnostics"]
    assert "0098765" not in resp.text  # no patient data in the answer
    assert counts(hk_settings)["inbound_resources"] == 0


def test_a_text_spelling_backslash_u0000_is_kept(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    """Six characters that spell an escape are text, not NUL: kept as sent."""
    bundle = copy.deepcopy(referral)
    bundle["entry"][2]["resource"]["name"][0]["text"] = "許嘉瑋 \\u0000"
    signed = sign_bundle(bundle, signer(pki, "nsch"), "author")
    resp = client.post("/fhir", content=orjson.dumps(signed), headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    assert counts(hk_settings)["inbound_resources"] > 0
