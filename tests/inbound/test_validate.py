"""POST /fhir holds what partners send to base R4 (the gateway's own validator): a
structurally wrong resource is refused with an OperationOutcome naming the entry and
the element, nothing stored; one bad entry names itself only; accepted traffic (the
golden referral, resources naming profiles the gateway does not hold them to) passes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, counts, partner, signer

PATIENT, SERVICE_REQUEST = 2, 9  # entries of the golden referral (ref_i12_utf8)


def _unknown_element(b: dict[str, Any]) -> None:
    b["entry"][PATIENT]["resource"]["favouriteColour"] = "blue"


def _wrong_type(b: dict[str, Any]) -> None:
    b["entry"][PATIENT]["resource"]["gender"] = 5


def _bad_cardinality(b: dict[str, Any]) -> None:
    del b["entry"][SERVICE_REQUEST]["resource"]["intent"]  # 1..1


def _bad_date(b: dict[str, Any]) -> None:
    b["entry"][PATIENT]["resource"]["birthDate"] = "1957-13-45"


def _list_for_one(b: dict[str, Any]) -> None:
    b["entry"][SERVICE_REQUEST]["resource"]["subject"] = [
        b["entry"][SERVICE_REQUEST]["resource"]["subject"]
    ]


@pytest.mark.parametrize(
    ("spoil", "where"),
    [
        (_unknown_element, f"Bundle.entry[{PATIENT}].resource.favouriteColour"),
        (_wrong_type, f"Bundle.entry[{PATIENT}].resource.gender"),
        (_bad_cardinality, f"Bundle.entry[{SERVICE_REQUEST}].resource.intent"),
        (_bad_date, f"Bundle.entry[{PATIENT}].resource.birthDate"),
        (_list_for_one, f"Bundle.entry[{SERVICE_REQUEST}].resource.subject"),
    ],
    ids=["unknown-element", "wrong-type", "cardinality", "bad-date", "list-for-one"],
)
def test_a_structurally_wrong_resource_is_422_naming_entry_and_element(
    spoil: Callable[[dict[str, Any]], None],
    where: str,
    client: Client,
    hk_settings: Settings,
    referral: dict[str, Any],
    pki: Path,
) -> None:
    bundle = copy.deepcopy(referral)
    spoil(bundle)
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    places = {e for i in outcome["issue"] for e in i.get("expression", [])}
    # that entry and element only, the others are fine (the models' path may go on
    # into the value: subject.root for a list where one Reference belongs)
    assert len(places) == 1 and places.pop().startswith(where)
    assert "許嘉瑋" not in resp.text and "1957-13-45" not in resp.text  # no patient data
    assert counts(hk_settings)["inbound_resources"] == 0  # nothing stored


def test_each_bad_entry_names_itself(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    _bad_date(bundle)
    _bad_cardinality(bundle)
    bundle["entry"][7]["resource"]["onsetDateTime"] = "yesterday"
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422
    places = sorted(e for i in resp.json()["issue"] for e in i.get("expression", []))
    assert places == [
        "Bundle.entry[2].resource.birthDate",
        "Bundle.entry[7].resource.onsetDateTime",
        "Bundle.entry[9].resource.intent",
    ]


def test_odd_values_are_refused_never_a_crash(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    resource = bundle["entry"][PATIENT]["resource"]
    resource["name"] = {"text": None}
    resource["identifier"] = "0098765"
    resource["extension"] = [None, 3]
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 422, resp.text
    places = {e for i in resp.json()["issue"] for e in i.get("expression", [])}
    assert places and all(p.startswith(f"Bundle.entry[{PATIENT}].resource.") for p in places)


def test_a_partner_profile_is_not_held_against_a_valid_resource(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path
) -> None:
    bundle = copy.deepcopy(referral)
    for entry in bundle["entry"]:  # profiles of the partner's own, unknown here
        meta = entry["resource"].setdefault("meta", {})
        meta["profile"] = ["https://fhir.nsch.example.cn/StructureDefinition/own"]
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 200, resp.text
    assert counts(hk_settings)["inbound_resources"] >= len(referral["entry"])
