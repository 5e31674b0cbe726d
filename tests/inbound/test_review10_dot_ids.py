"""Review of safe13: an id of dots alone (``.``, ``..``) matches R4's id pattern, yet as a
URL it is a dot segment (RFC 3986 §5.2.4): ``Patient/..`` is the base itself and
``Patient/.`` the Patient type (a search of every patient) to any local system or
client that follows it, while the store kept the record under a ``Patient/..`` that
collected whatever identifiers were written beside it. Such a reference names no
resource a server agrees on: refused as the other spellings outside the grammar are
(422 inbound.unresolved-reference naming the element), and so is an update
``PUT Patient/..`` (inbound.bad-entry)."""

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
from .test_adversarial_reference_grammar import _diagnosis
from .test_adversarial_unstored_patient import A_MRN, CONDITION

DOTS = [
    "Patient/..",
    "Patient/.",
    f"{PUBLIC_URL}/fhir/Patient/..",
    "Patient/p-1/_history/..",
    "Patient/p-1/_history/.",
]


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


@pytest.mark.parametrize("spelling", DOTS)
def test_a_reference_to_a_dot_segment_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, spelling: str,
) -> None:  # fmt: skip
    resp = _post(client, _diagnosis(referral, spelling, A_MRN, 1), pki)
    where = f"Bundle.entry[{CONDITION}].resource.subject"
    _refused(resp, "inbound.unresolved-reference", where, logs)
    assert counts(hk_settings)["inbound_resources"] == 0


@pytest.mark.parametrize("target", ["Patient/..", "Patient/."])
def test_an_update_of_a_dot_segment_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path, target: str
) -> None:
    bundle = copy.deepcopy(referral)
    patient = bundle["entry"][2]
    patient["request"] = {"method": "PUT", "url": target}
    resp = _post(client, bundle, pki)
    assert resp.status_code in (400, 422), resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.bad-entry"
    assert issue["expression"] == ["Bundle.entry[2].request.url"]
    assert counts(hk_settings)["inbound_resources"] == 0
