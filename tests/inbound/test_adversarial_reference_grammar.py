"""Adversarial review of POST /fhir: a patient reference spelled outside FHIR R4's
reference grammar (references.html: a literal reference is ``[base]/Type/id`` or
``[base]/Type/id/_history/vid``; a transaction's conditional one ``Type?query``).
``Patient/p-1/_history`` (no version), ``Patient/p-1/``, ``Patient/p-1/_history/``,
``Patient/p-1?x``, ``./Patient/p-1`` -- or any of them under this gateway's own base
-- matched none of the gateway's forms, so they were kept as sent and no identity
check saw them: NSCH's record with 陈美玲's MRN beside ``Patient/p-1/_history`` was
kept under ``Patient/p-1`` (the store reads that as the patient) where 许嘉玮's
records with his MRN were kept before. Such a reference has no meaning a server
agrees on: it is refused (422 ``inbound.unresolved-reference`` naming the element),
the whole Bundle, nothing stored, no patient data in the answer or the log. A
versioned reference ``Patient/p-1/_history/1`` is a literal one: checked as
``Patient/p-1``. (``./Patient/p-1``, ``/Patient/p-1`` and a version-specific entry
``fullUrl``, R4 bdl-8, are refused by the validation before.)"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import PUBLIC_URL, counts
from .test_adversarial_identity import _post, _refused
from .test_adversarial_referral_subject import _referral_for
from .test_adversarial_unstored_patient import (
    A_MRN,
    CONDITION,
    OTHER_MRN,
    UNSTORED,
    _new_condition,
)

ODD = [
    "Patient/p-1/_history",
    "Patient/p-1/",
    "Patient/p-1/_history/",
    "Patient/p-1/_history/1/",
    "Patient/p-1?x",
    "Patient/p-1?_id=p-1",
    "Patient/p-1#x",
    "Patient//p-1",
    "Patient/p-1/Patient/p-1",
    f"{PUBLIC_URL}/fhir/Patient/p-1/_history",
    f"{PUBLIC_URL}/fhir/Patient/p-1/",
    f"{PUBLIC_URL}/fhir/Patient/p-1?x",
    f"{PUBLIC_URL}/fhir/./Patient/p-1",
]


def _diagnosis(
    referral: dict[str, Any], reference: str, ident: dict[str, str], n: int
) -> dict[str, Any]:
    """Bundle ``n``: the referral's organisations and practitioners and a new diagnosis
    of the patient ``reference`` names, ``ident`` beside it (no ServiceRequest: its
    resend is compared with its Task by the referral check first)."""
    bundle = _referral_for(referral, reference, None, n)
    _new_condition(bundle, ident)
    del bundle["entry"][CONDITION + 1 :]
    return bundle


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.mark.parametrize("spelling", ODD)
def test_a_patient_reference_outside_the_grammar_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, spelling: str,
) -> None:  # fmt: skip
    # 许嘉玮's referral under Patient/p-1 (his MRN beside it), then a Bundle whose
    # records all spell the same reference oddly, 陈美玲's MRN beside a new diagnosis
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    before = counts(hk_settings)
    bundle = _diagnosis(referral, spelling, OTHER_MRN, 2)
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject"
    _refused(resp, "inbound.unresolved-reference", where, logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


@pytest.mark.parametrize("spelling", ["Practitioner/o-1/", "Practitioner/o-1/_history"])
def test_another_reference_outside_the_grammar_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, spelling: str,
) -> None:  # fmt: skip
    # not a patient's, yet no server reads it either: the literal-reference checks
    # (another institution's resource) never saw it
    bundle = copy.deepcopy(referral)
    bundle["entry"][CONDITION + 1]["resource"]["asserter"] = {"reference": spelling}
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION + 1}].resource.asserter"
    _refused(resp, "inbound.unresolved-reference", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("base", ["", f"{PUBLIC_URL}/fhir/"])
def test_a_versioned_reference_is_checked_as_its_patient(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, base: str,
) -> None:  # fmt: skip
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    bundle = _diagnosis(referral, f"{base}{UNSTORED}/_history/1", OTHER_MRN, 2)
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    agreeing = _diagnosis(referral, f"{base}{UNSTORED}/_history/1", A_MRN, 3)
    assert _post(client, agreeing, pki).status_code == 200
