"""The policy's data: published codes in step with the data, malformed data and keys
refused with the file named, the seeds' story (one expired agreement, a partner outside
the GBA)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import orjson
import pytest
from fhir.resources.R4B.codesystem import CodeSystem

from gateway import Settings
from gateway.datafiles import data_dir
from gateway.errors import ConfigError
from gateway.policy import Policy, PolicyError, parse_consent, policy_key

from .conftest import HKID, KEY, consent


def _codes(name: str) -> set[str]:
    raw = orjson.loads((data_dir("profiles") / f"CodeSystem-{name}.json").read_bytes())
    return {c.code for c in CodeSystem.model_validate(raw).concept or []}


def test_published_codes_match_the_data(policy: Policy) -> None:
    assert _codes("cross-border-legal-basis") == set(policy.data.bases)
    assert _codes("transfer-purpose") == set(policy.data.purposes)


def test_the_demo_agreements(policy: Policy) -> None:
    data = policy.data
    expired = [a.id for a in data.agreements if a.valid_to and a.valid_to < date(2026, 6, 18)]
    assert expired == ["GBA-SC-2023-NSGP-HKPMC"]
    njmu2 = policy.network.find("NJMU2")
    lax2 = policy.network.find("LAX2")
    nsch = policy.network.find("NSCH")
    assert njmu2 and lax2 and nsch
    assert not data.in_region(njmu2, "gba") and not data.in_region(lax2, "gba")
    assert data.in_region(nsch, "gba") and data.in_region(policy.institution("HKPMC", "x"), "gba")


def test_malformed_agreements_name_the_file(tmp_path: Path, settings: Settings) -> None:
    bad = tmp_path / "agreements.yaml"
    seeds = (data_dir("seeds") / "agreements.yaml").read_text(encoding="utf-8")
    bad.write_text(
        seeds.replace(
            "basis: domestic\n    parties: [njmu2", "basis: handshake\n    parties: [njmu2"
        ),
        encoding="utf-8",
    )
    import dataclasses

    with pytest.raises(ConfigError) as caught:
        Policy(dataclasses.replace(settings, policy_agreements=bad), key=KEY)
    assert caught.value.code == "config.policy"
    assert str(bad) in str(caught.value) and "unknown basis 'handshake'" in str(caught.value)


def test_the_key_comes_from_the_environment_or_a_private_file(tmp_path: Path) -> None:
    settings = Settings.load(home=tmp_path, env={})
    made = policy_key(settings, env={})
    assert len(made) == 32 and policy_key(settings, env={}) == made  # made once, kept
    key_file = settings.secrets_dir / "policy-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert policy_key(settings, env={"GATEWAY_POLICY_KEY": "ab" * 32}) == bytes([0xAB]) * 32
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError) as loose:
        policy_key(settings, env={})
    assert loose.value.code == "config.policy-key" and "private" in str(loose.value)
    with pytest.raises(ConfigError) as short:
        policy_key(settings, env={"GATEWAY_POLICY_KEY": "abcd"})
    assert "32 bytes" in str(short.value) and "abcd" not in str(short.value)


@pytest.mark.parametrize(
    "change,where",
    [
        (lambda c: c.update(scope={"coding": [{"code": "research"}]}), "Consent.scope"),
        (lambda c: c.update(patient={"reference": "Patient/1"}), "Consent.patient.identifier"),
        (
            lambda c: c["provision"].update(purpose=[{"system": "x", "code": "y"}]),
            "Consent.provision.purpose",
        ),
        (
            lambda c: c["provision"]["actor"][0]["reference"]["identifier"].update(
                value="urn:oid:1.2.3"
            ),
            "Consent.provision.actor[0].reference",
        ),
        (lambda c: c["provision"].update(actor=[]), "Consent.provision.actor"),
    ],
)
def test_a_consent_that_cannot_be_used_is_refused_naming_the_element(
    policy: Policy, change, where
) -> None:  # type: ignore[no-untyped-def]
    resource = consent((HKID, "K583726A"), "HKPMC")
    change(resource)
    with pytest.raises(PolicyError) as caught:
        parse_consent(resource, policy.network, policy.data.purposes)
    assert caught.value.code == "policy.consent-invalid" and caught.value.location == where
    assert "K583726A" not in str(caught.value)


def test_an_unknown_purpose_is_refused(policy: Policy) -> None:
    bundle = b'{"resourceType": "Bundle", "type": "transaction", "entry": []}'
    with pytest.raises(PolicyError) as caught:
        policy.decide(bundle, "NSCH", "HKPMC", "marketing")
    assert caught.value.code == "policy.unknown-purpose"
    with pytest.raises(PolicyError) as not_bundle:
        policy.decide(b"{}", "NSCH", "HKPMC")
    assert not_bundle.value.code == "policy.bundle"
