"""Adversarial review of a resent referral's patient (docs/inbound.md "Referral
status"): a referral whose ``subject`` names no patient anything can match -- only a
``display`` (``{"display": "陳大文"}``), or an identifier without a system -- was taken
for the same patient as its Task's ``for`` whenever the two were equal: two patients
named 陳大文, or a number of no namespace, are not one patient, and the resend
changed (or cancelled) the first one's Task. Equal is no proof now: 409
``inbound.referral-mismatch`` naming ``ServiceRequest.subject``, nothing stored."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, counts
from .test_adversarial_identity import PATIENT, _post

SUBJECTS = {
    "display": {"display": "陳大文"},
    "systemless": {"identifier": {"value": "0098765"}, "display": "陳大文"},
}
SECRETS = ("陳大文", "陈大文", "0098765")


def _named(referral: dict[str, Any], subject: dict[str, Any], n: int) -> dict[str, Any]:
    """The referral without its Patient entry, its records' subject ``subject``."""
    url = referral["entry"][PATIENT]["fullUrl"]
    text = orjson.dumps(referral).decode()
    text = text.replace(orjson.dumps({"reference": url}).decode(), orjson.dumps(subject).decode())
    bundle: dict[str, Any] = orjson.loads(text)
    del bundle["entry"][PATIENT]
    bundle["identifier"]["value"] = f"NSCH-UNNAMED-{n}"
    return bundle


@pytest.mark.parametrize("subject", list(SUBJECTS))
def test_a_resend_whose_subject_names_no_patient_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    caplog: pytest.LogCaptureFixture, subject: str,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="gateway")
    first = _post(client, _named(referral, SUBJECTS[subject], 1), pki)
    assert first.status_code == 200, first.text
    [task] = [e["resource"] for e in client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]]
    before = counts(hk_settings)
    again = _named(referral, copy.deepcopy(SUBJECTS[subject]), 2)
    again["entry"][-1]["resource"]["status"] = "revoked"  # would cancel the first's Task
    resp = _post(client, again, pki)
    assert resp.status_code == 409, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.referral-mismatch"
    assert issue["expression"] == ["ServiceRequest.subject"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "inbound.referral-mismatch" in logged
    for secret in SECRETS:
        assert secret not in resp.text and secret not in logged
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    now = client.get(f"/fhir/Task/{task['id']}", headers=LOCAL_AUTH).json()
    assert now["status"] == "requested"  # not cancelled by another 陳大文's referral
