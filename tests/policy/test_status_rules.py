"""A referral's status reply (a Task back to the gateway that sent the referral) is
decided by ``status_rules`` (mappings/policy/rules.yaml): back to its issuer on the
``return-to-issuer`` basis; held when it carries an identifier the recipient did not
issue (the system named, never the value), or when no status_rules are written. The
rules are read strictly: a kind that cannot decide a Task, an unknown basis, or rules
that give no basis are refused when loaded."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway import Settings
from gateway.errors import ConfigError
from gateway.policy import Policy

from .conftest import KEY, NOW

REPO = Path(__file__).resolve().parents[2]
NSCH_MRN = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0098765"}
HKID = {"system": "https://www.gov.hk/sid/hkid", "value": "K583726(A)"}
REFERRAL = {"system": "https://fhir.nsch.example.cn/sid/referral", "value": "REF20260618001"}


def _status(patient: dict[str, str] | None) -> dict[str, Any]:
    """HKPMC's status Bundle for NSCH's referral, the patient by ``patient``."""
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [
            {"system": "https://fhir.hkpmc.example.hk/sid/referral-task", "value": "NSCH-REF1"}
        ],
        "status": "accepted",
        "intent": "order",
        "focus": {"type": "ServiceRequest", "identifier": REFERRAL},
        "owner": {"type": "Organization", "identifier": {"value": "urn:oid:1.3.6.1.4.1.99999.1.1"}},
    }
    if patient is not None:
        task["for"] = {"type": "Patient", "identifier": patient}
    return {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": task}]}


def _policy(settings: Settings, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Policy:
    policy_dir = tmp_path / "policy"
    shutil.copytree(REPO / "mappings" / "policy", policy_dir)
    rules = yaml.safe_load((policy_dir / "rules.yaml").read_text(encoding="utf-8"))
    change(rules)
    (policy_dir / "rules.yaml").write_text(yaml.safe_dump(rules, allow_unicode=True), "utf-8")
    return Policy(dataclasses.replace(settings, policy_dir=policy_dir), key=KEY)


def test_a_status_goes_back_to_its_issuer_on_its_basis(policy: Policy) -> None:
    assert policy.crosses("hkpmc", "nsch") and not policy.crosses("nsgp", "nsch")
    decision = policy.decide_status(_status(NSCH_MRN), "hkpmc", "nsch", now=NOW)
    assert (decision.outcome, decision.basis, decision.purpose) == (
        "allow",
        "return-to-issuer",
        "referral",
    )
    assert decision.cross_border and decision.bundle_json is None  # sent as made
    assert len(decision.people) == 1 and len(decision.patients) == 1  # NSCH's MRN, pseudonymised
    assert "0098765" not in str(decision.people) + str(decision.patients)


def test_an_identifier_the_recipient_did_not_issue_holds_it(policy: Policy) -> None:
    decision = policy.decide_status(_status(HKID), "hkpmc", "nsch", now=NOW)
    assert (decision.outcome, decision.basis) == ("hold", None)
    (result,) = decision.results
    assert result.reason_code == "status.not-issuer"
    assert "Bundle.entry[0].resource.for (https://www.gov.hk/sid/hkid)" in result.reason["en"]
    assert "K583726" not in str(result.reason)


def test_no_status_rules_hold_every_status(settings: Settings, tmp_path: Path) -> None:
    def drop(rules: dict[str, Any]) -> None:
        del rules["status_rules"]

    decision = _policy(settings, tmp_path, drop).decide_status(
        _status(NSCH_MRN), "hkpmc", "nsch", now=NOW
    )
    assert decision.outcome == "hold"
    assert [r.reason_code for r in decision.results] == ["status.no-rules"]


def _consent_kind(rules: dict[str, Any]) -> None:
    rules["status_rules"].append({"id": "consent", "kind": "consent"})


def _unknown_basis(rules: dict[str, Any]) -> None:
    rules["status_rules"][0]["params"]["basis"] = "return-to-isuer"


def _no_basis(rules: dict[str, Any]) -> None:
    rules["status_rules"] = [{"id": "p", "kind": "prohibited", "params": {"lists": []}}]


def _empty(rules: dict[str, Any]) -> None:
    rules["status_rules"] = []


def _return_in_record_rules(rules: dict[str, Any]) -> None:
    rules["rules"].append(dict(rules["status_rules"][0]))


@pytest.mark.parametrize(
    "change", [_consent_kind, _unknown_basis, _no_basis, _empty, _return_in_record_rules]
)
def test_status_rules_are_read_strictly(
    settings: Settings, tmp_path: Path, change: Callable[[dict[str, Any]], None]
) -> None:
    with pytest.raises(ConfigError) as caught:
        _policy(settings, tmp_path, change)
    assert "rules.yaml" in str(caught.value)


def _contained_patient(bundle: dict[str, Any]) -> str:
    other = {"resourceType": "Patient", "id": "p", "name": [{"family": "陈"}]}
    bundle["entry"][0]["resource"]["contained"] = [other]
    return "Bundle.entry[0].resource.contained"


def _second_patient(bundle: dict[str, Any]) -> str:
    other = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0011111"}
    bundle["entry"].append(_status(other)["entry"][0])
    return "2 patients"


def _provenance(bundle: dict[str, Any]) -> str:
    bundle["entry"].append({"resource": {"resourceType": "Provenance", "target": []}})
    return "Bundle.entry[1].resource (Provenance)"


def _literal_beside(bundle: dict[str, Any]) -> str:
    bundle["entry"][0]["resource"]["for"]["reference"] = "Patient/another"
    return "Bundle.entry[0].resource.for.reference"


def _observation(bundle: dict[str, Any]) -> str:
    bundle["entry"].append({"resource": {"resourceType": "Observation", "status": "final"}})
    return "Bundle.entry[1].resource (Observation)"


@pytest.mark.parametrize(
    "ride", [_contained_patient, _second_patient, _provenance, _literal_beside, _observation]
)
def test_nothing_rides_along_with_a_status(
    policy: Policy, ride: Callable[[dict[str, Any]], str]
) -> None:
    """Every identifier NSCH's own, yet more than a status: held, the extra named."""
    bundle = _status(NSCH_MRN)
    where = ride(bundle)
    decision = policy.decide_status(bundle, "hkpmc", "nsch", now=NOW)
    assert (decision.outcome, decision.basis) == ("hold", None)
    (result,) = decision.results
    assert result.reason_code == "status.not-status"
    assert where in result.reason["en"]
    assert "0011111" not in str(result.reason) and "陈" not in str(result.reason)
