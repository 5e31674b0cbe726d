"""Adversarial review of POST /fhir: identifiers without a system beside one
``Patient/<id>`` that nothing here has stored (docs/inbound.md, "one patient"). "A
value without a system contradicts nothing" let 许嘉玮's MRN ``{type: MR, value:
0098765}`` and 陈美玲's ``{type: MR, value: 0011111}`` be kept beside the same
reference: two patients' records under one id. Two identifiers without a system but
with the same type code (both an MRN) and different values now name two patients:
422 ``inbound.identity-mismatch`` naming the element, nothing stored. Without a type
code in common (or with one), a lone value still contradicts nothing."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import counts
from .test_adversarial_identity import _post, _refused
from .test_adversarial_referral_subject import _referral_for
from .test_adversarial_unstored_patient import CONDITION, SERVICE_REQUEST, UNSTORED, _new_condition

V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _typed(code: str | None, value: str) -> dict[str, Any]:
    """An identifier without a system, of type ``code`` (v2-0203) if any."""
    out: dict[str, Any] = {"value": value}
    if code is not None:
        out["type"] = {"coding": [{"system": V2_0203, "code": code}]}
    return out


A_MR = _typed("MR", "0098765")  # 许嘉玮's
OTHER_MR = _typed("MR", "0011111")  # 陈美玲's


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_two_systemless_mrns_beside_one_unstored_reference_in_a_bundle_are_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, kind: str,
) -> None:  # fmt: skip
    bundle = _referral_for(referral, UNSTORED, copy.deepcopy(OTHER_MR), 1)  # 陈美玲's
    bundle["type"] = kind
    bundle["entry"][CONDITION]["resource"]["subject"]["identifier"] = copy.deepcopy(A_MR)
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{SERVICE_REQUEST}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


def test_another_systemless_mrn_beside_an_unstored_reference_kept_before_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    first = _post(client, _referral_for(referral, UNSTORED, copy.deepcopy(A_MR), 1), pki)
    assert first.status_code == 200, first.text  # 许嘉玮's referral
    before = counts(hk_settings)
    bundle = _referral_for(referral, UNSTORED, None, 2)
    _new_condition(bundle, copy.deepcopy(OTHER_MR))  # 陈美玲's diagnosis, under his id
    resp = _post(client, bundle, pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject.identifier"
    _refused(resp, "inbound.identity-mismatch", where, logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


@pytest.mark.parametrize(
    "ident",
    [A_MR, _typed("PPN", "E12345678"), _typed(None, "0011111")],
    ids=["the-same-mrn", "another-type", "no-type"],
)
def test_systemless_identifiers_that_do_not_contradict_are_stored(
    client: Client, referral: dict[str, Any], pki: Path, ident: dict[str, Any]
) -> None:
    first = _post(client, _referral_for(referral, UNSTORED, copy.deepcopy(A_MR), 1), pki)
    assert first.status_code == 200, first.text
    bundle = _referral_for(referral, UNSTORED, copy.deepcopy(A_MR), 2)
    _new_condition(bundle, copy.deepcopy(ident))
    resp = _post(client, bundle, pki)
    assert resp.status_code == 200, resp.text
