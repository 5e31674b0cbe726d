"""The network file is watched like the rule and agreement files (an institution's
place changed under a running gateway applies to the next decision), and minimisation
reaches the Patients a ``Parameters`` resource carries (each an individual of the
record, needing a consent of their own)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway import Settings
from gateway.errors import ConfigError
from gateway.policy import MemoryConsents, Policy, parse_consent
from tests.policy.conftest import HKID, KEY, NOW, REPO, consent

MOTHER_HKID = "Y7654321"
MOTHER_PHONE = "+85291234567"


def _network_copy(settings: Settings, tmp_path: Path) -> tuple[Policy, Path]:
    path = tmp_path / "network.yaml"
    shutil.copy(REPO / "seeds" / "network.yaml", path)
    policy = Policy(dataclasses.replace(settings, network=path), key=KEY)
    policy.watch.reload_interval = 0.0  # look at the files at every decision
    return policy, path


def _edit(path: Path, key: str, **values: Any) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    entry = next(i for i in data["institutions"] if i["key"] == key)
    entry.update(values)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")


def test_an_institution_moved_in_the_network_file_applies_to_the_next_decision(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    """Lai'an → Nanjing is domestic; the network file then says Nanjing's hospital is in
    Hong Kong (an operator's correction, here a drastic one): the very next decision
    sees a cross-border transfer, without a restart."""
    policy, path = _network_copy(settings, tmp_path)
    name = "ref_i12_lax2_to_njmu2"
    before = policy.decide(bundles[name], "LAX2", "NJMU2", now=NOW)
    assert before.allowed and not before.cross_border
    _edit(path, "njmu2", jurisdiction="HK")
    after = policy.decide(bundles[name], "LAX2", "NJMU2", now=NOW)
    assert after.cross_border  # before: the network as it was at start
    assert after.outcome != "allow"


def test_a_network_file_broken_while_running_stops_decisions_until_mended(
    settings: Settings, tmp_path: Path, bundles: dict[str, bytes]
) -> None:
    policy, path = _network_copy(settings, tmp_path)
    good = path.read_text(encoding="utf-8")
    path.write_text("institutions: 南沙", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        policy.decide(bundles["ref_i12_lax2_to_njmu2"], "LAX2", "NJMU2", now=NOW)
    assert "network.yaml" in str(caught.value)
    path.write_text(good, encoding="utf-8")
    assert policy.decide(bundles["ref_i12_lax2_to_njmu2"], "LAX2", "NJMU2", now=NOW).allowed


def _with_parameters(bundle: bytes) -> dict[str, Any]:
    """許嘉瑋's referral to Hong Kong, with a Parameters entry carrying her mother
    許陳美玲 (the family history's informant) as a Patient, once in a part."""
    out = orjson.loads(bundle)
    mother = {
        "resourceType": "Patient",
        "id": "mother-1",
        "identifier": [{"system": HKID, "value": MOTHER_HKID}],
        "name": [{"text": "許陳美玲", "family": "許", "given": ["陳美玲"]}],
        "telecom": [{"system": "phone", "value": MOTHER_PHONE}],
        "address": [{"line": ["香港九龍觀塘區協和街90號"], "city": "九龍", "country": "HKG"}],
    }
    out["entry"].append(
        {
            "fullUrl": "urn:uuid:7d0e2a2c-5b5e-4f43-9a3e-0c8a8e0f0b01",
            "resource": {
                "resourceType": "Parameters",
                "id": "family-history",
                "parameter": [
                    {"name": "informant", "resource": mother},
                    {"name": "household", "part": [{"name": "member", "resource": mother}]},
                ],
            },
            "request": {"method": "POST", "url": "Parameters"},
        }
    )
    return out


def _consents(policy: Policy, *patients: str) -> MemoryConsents:
    return MemoryConsents(
        [
            parse_consent(
                consent((HKID, p), "HKPMC", ident=f"consent-{n}"),
                policy.network,
                policy.data.purposes,
            )
            for n, p in enumerate(patients)
        ]
    )


def test_minimisation_reaches_patients_inside_parameters(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    bundle = _with_parameters(bundles["ref_i12_nsch_to_hkpmc"])
    consents = _consents(policy, "K583726A", MOTHER_HKID)
    decision = policy.decide(bundle, "NSCH", "HKPMC", "referral", consents=consents, now=NOW)
    assert decision.outcome == "allow-with-changes"
    assert decision.bundle_json is not None
    out = decision.bundle_json.decode()
    # Before: her mother's HKID, phone and street crossed as they were.
    assert MOTHER_HKID not in out and "91234567" not in out and "協和街90號" not in out
    [params] = [
        e["resource"]
        for e in orjson.loads(decision.bundle_json)["entry"]
        if e["resource"]["resourceType"] == "Parameters"
    ]
    informant = params["parameter"][0]["resource"]
    assert informant["identifier"][0]["value"].startswith("PSN-")
    assert "telecom" not in informant and informant["address"] == [
        {"city": "九龍", "country": "HKG"}
    ]
    member = params["parameter"][1]["part"][0]["resource"]
    assert member["identifier"][0]["value"] == informant["identifier"][0]["value"]
    paths = {c.path for c in decision.changes}
    assert any(".resource.parameter[1].part[0].resource.telecom[0]" in p for p in paths)
    # The input is the caller's: never changed.
    assert bundle["entry"][-1]["resource"]["parameter"][0]["resource"]["telecom"]


def test_a_patient_inside_parameters_needs_a_consent_of_their_own(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    bundle = _with_parameters(bundles["ref_i12_nsch_to_hkpmc"])
    consents = _consents(policy, "K583726A")  # the daughter's alone
    decision = policy.decide(bundle, "NSCH", "HKPMC", "referral", consents=consents, now=NOW)
    assert decision.outcome == "hold"
