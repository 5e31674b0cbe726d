"""Adversarial: data crossing on a consent that does not cover it: another patient's
consent in the same Bundle, a consent whose exceptions (nested provisions) refuse the
purpose or recipient, the edges of a consent's period."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import orjson
import pytest

from gateway.policy import MemoryConsents, Policy, PolicyError, parse_consent

from .conftest import HKID, NOW, RESIDENT_ID, consent

NAME, SENDER, RECIPIENT = "ref_i12_nsch_to_hkpmc", "NSCH", "HKPMC"
OTHER_ID = "11010519491231002X"  # a second individual (valid check digit, nobody's)


def _patient_id(bundle: bytes) -> str:
    parsed = orjson.loads(bundle)
    patient = next(
        e["resource"] for e in parsed["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    return str(next(i["value"] for i in patient["identifier"] if i["system"] == HKID))


def _consents(policy: Policy, *resources: dict[str, Any]) -> MemoryConsents:
    return MemoryConsents(
        [parse_consent(r, policy.network, policy.data.purposes) for r in resources]
    )


def _decide(
    policy: Policy, bundle: bytes | dict[str, Any], *resources: dict[str, Any], now: datetime = NOW
) -> Any:
    return policy.decide(
        bundle, SENDER, RECIPIENT, "referral", consents=_consents(policy, *resources), now=now
    )


def _with_second_patient(bundle: bytes) -> dict[str, Any]:
    parsed = orjson.loads(bundle)
    parsed["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000b2",
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": RESIDENT_ID, "value": OTHER_ID}],
                "name": [{"text": "陈小明"}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    )
    return parsed


def test_the_baseline_consent_allows(policy: Policy, bundles: dict[str, bytes]) -> None:
    mine = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT)
    assert _decide(policy, bundles[NAME], mine).allowed


def test_one_patients_consent_does_not_carry_another_patient_across(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    """A Bundle holding two individuals: each needs a consent of their own."""
    mine = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT)
    bundle = _with_second_patient(bundles[NAME])
    decision = _decide(policy, bundle, mine)
    held = next(r for r in decision.results if r.rule == "consent")
    assert decision.outcome == "hold" and held.reason_code == "consent.missing"
    assert decision.bundle_json is None
    theirs = consent((RESIDENT_ID, OTHER_ID), RECIPIENT, ident="consent-2")
    assert _decide(policy, bundle, mine, theirs).allowed


@pytest.mark.parametrize(
    "exception",
    [
        {"type": "deny", "purpose": [{"system": "x", "code": "y"}]},
        {"type": "deny", "actor": []},
        {"type": "deny"},
    ],
)
def test_a_consent_with_exceptions_is_refused_not_read_as_a_plain_permit(
    policy: Policy, bundles: dict[str, bytes], exception: dict[str, Any]
) -> None:
    """Nested provisions are exceptions to the permit (FHIR R4 Consent.provision.provision):
    the gateway does not evaluate them, so it must not import such a Consent as if the
    patient had permitted everything the outer provision names."""
    resource = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT)
    nested = copy.deepcopy(exception)
    if "purpose" in nested:
        nested["purpose"] = copy.deepcopy(resource["provision"]["purpose"])
    if "actor" in nested:
        nested["actor"] = copy.deepcopy(resource["provision"]["actor"])
    resource["provision"]["provision"] = [nested]
    with pytest.raises(PolicyError) as caught:
        parse_consent(resource, policy.network, policy.data.purposes)
    assert caught.value.code == "policy.consent-invalid"
    assert caught.value.location == "Consent.provision.provision"


@pytest.mark.parametrize(
    "kw,now",
    [
        ({"start": "2026-06-19"}, NOW),  # not yet in force
        ({"end": "2026-06-18"}, datetime(2026, 6, 19, 0, 0, 1)),  # its last day is over
    ],
)
def test_a_consent_out_of_its_period_holds(
    policy: Policy, bundles: dict[str, bytes], kw: dict[str, Any], now: datetime
) -> None:
    """The period's edges (test_rules.py has withdrawn, lapsed, other purpose, other
    recipient, other patient)."""
    resource = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT, **kw)
    decision = _decide(policy, bundles[NAME], resource, now=now)
    assert decision.outcome == "hold" and decision.bundle_json is None


def test_a_contained_patient_needs_a_consent_of_their_own(
    policy: Policy, bundles: dict[str, bytes]
) -> None:
    """Another individual contained in a resource (not a Bundle entry) is one too."""
    mine = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT)
    parsed = orjson.loads(bundles[NAME])
    holder = next(
        e["resource"] for e in parsed["entry"] if e["resource"]["resourceType"] != "Patient"
    )
    holder["contained"] = [
        {
            "resourceType": "Patient",
            "id": "other",
            "identifier": [{"system": RESIDENT_ID, "value": OTHER_ID}],
        }
    ]
    assert _decide(policy, parsed, mine).outcome == "hold"
    theirs = consent((RESIDENT_ID, OTHER_ID), RECIPIENT, ident="consent-2")
    assert _decide(policy, parsed, mine, theirs).allowed


@pytest.mark.parametrize(
    "element,value",
    [
        ("class", [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]),
        ("data", [{"meaning": "instance", "reference": {"reference": "Patient/1"}}]),
        ("dataPeriod", {"start": "2026-06-01", "end": "2026-06-02"}),
        ("code", [{"coding": [{"system": "http://loinc.org", "code": "11502-2"}]}]),
        (
            "securityLabel",
            [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
        ),
    ],
)
def test_a_consent_narrowed_to_some_data_is_refused_not_read_as_all_data(
    policy: Policy, bundles: dict[str, bytes], element: str, value: Any
) -> None:
    """ "Only my demographics", "only data of these two days": narrowing the gateway does
    not evaluate; before, such a Consent let the whole record cross."""
    resource = consent((HKID, _patient_id(bundles[NAME])), RECIPIENT)
    resource["provision"][element] = value
    with pytest.raises(PolicyError) as caught:
        parse_consent(resource, policy.network, policy.data.purposes)
    assert caught.value.location == f"Consent.provision.{element}"
