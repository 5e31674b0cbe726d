"""Adversarial review of the inbound look-ups that still compared identifier systems as
written while the identity checks compared them however spelled (gateway/
fhirsystems.py: scheme and host in any case, no default port, no trailing slash,
escaped unreserved characters as themselves):

* ``patient=system|value`` (a search, a condition's ``patient=``) found none of the
  records kept under 许嘉玮's Patient when NSCH's MRN system was spelled
  ``…/sid/mrn/``: a local system saw no record, a conditional create stored it twice;
* NSCH's referral resent with its ``ServiceRequest.identifier`` system spelled
  ``HTTPS://FHIR.NSCH.EXAMPLE.CN/sid/referral`` updated the stored ServiceRequest (its
  condition matched however spelled) and was then refused 409 as "another referral's".

Another system (another path, or the path in another case) is still another referral."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, NSCH_TOKEN, partner, signer

MRN = "https://fhir.nsch.example.cn/sid/mrn"
REFERRAL = "https://fhir.nsch.example.cn/sid/referral"
# the spellings the identity tests use (test_adversarial_system_spelling.py), and an
# escaped letter: each is the same system
SPELLINGS = ["trailing-slash", "capitals", "default-port", "escaped"]


def _spelled(system: str, how: str) -> str:
    scheme_host, path = system.split("/sid/", 1)
    if how == "capitals":
        return f"{scheme_host.upper()}/sid/{path}"
    if how == "default-port":
        return f"{scheme_host}:443/sid/{path}"
    if how == "escaped":  # %6D is m, %72 is r
        return f"{scheme_host}/sid/%{ord(path[0]):02X}{path[1:]}"
    return f"{system}/"


def _post(client: Client, bundle: dict[str, Any], pki: Path) -> Any:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))


def _tasks(client: Client) -> list[dict[str, Any]]:
    found = client.get("/fhir/Task", headers=LOCAL_AUTH).json().get("entry", [])
    return [e["resource"] for e in found]


def _resent(referral: dict[str, Any], system: str) -> dict[str, Any]:
    """The referral again in a new Bundle, its ServiceRequest's identifier (and the
    condition of its update) under ``system``."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = "NSCH20260619080000003"
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            ident = entry["resource"]["identifier"][0]
            ident["system"] = system
            entry["request"]["url"] = f"ServiceRequest?identifier={system}|{ident['value']}"
    return bundle


@pytest.mark.parametrize("how", SPELLINGS)
def test_a_patient_search_by_the_mrn_spelled_otherwise_finds_the_records(
    client: Client, referral: dict[str, Any], pki: Path, how: str
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    params = {"patient": f"{_spelled(MRN, how)}|0098765"}
    found = client.get("/fhir/Condition", params=params, headers=LOCAL_AUTH).json()
    assert len(found.get("entry", [])) == 2  # 许嘉玮's two diagnoses
    other = client.get(
        "/fhir/Condition", params={"patient": f"{MRN}|0011111"}, headers=LOCAL_AUTH
    ).json()
    assert other.get("entry", []) == []  # another MRN: nobody's records


@pytest.mark.parametrize("how", SPELLINGS)
def test_a_referral_resent_with_its_system_spelled_otherwise_keeps_its_task(
    client: Client, referral: dict[str, Any], pki: Path, how: str
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    task = _tasks(client)
    resp = _post(client, _resent(referral, _spelled(REFERRAL, how)), pki)
    assert resp.status_code == 200, resp.text
    assert _tasks(client) == task  # the same one Task, unchanged


@pytest.mark.parametrize(
    "system", [f"{REFERRAL}2", "https://fhir.nsch.example.cn/sid/Referral"],
    ids=["another-path", "path-case"],
)  # fmt: skip
def test_a_referral_resent_under_another_system_is_still_refused(
    client: Client, referral: dict[str, Any], pki: Path, system: str
) -> None:
    assert _post(client, copy.deepcopy(referral), pki).status_code == 200
    task = _tasks(client)
    resp = _post(client, _resent(referral, system), pki)
    assert resp.status_code == 409, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.referral-mismatch"
    assert _tasks(client) == task
