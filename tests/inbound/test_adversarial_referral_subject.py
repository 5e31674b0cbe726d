"""Adversarial review of a resent referral's patient (docs/inbound.md "Referral
status"): a resend whose ``subject`` is the same literal reference as its Task's
``for`` keeps the Task whatever identifier it writes beside it, because that identifier
was checked to be the stored Patient's own when the Bundle was applied. A reference the
gateway cannot check it against -- a ``Patient/<id>`` nothing stored here holds, or a
Patient on the partner's own FHIR server (kept as sent) -- is no such proof: the
referral first for ``Patient/p-1`` with 许嘉玮's MRN 0098765 beside it, resent with
陈美玲's MRN 0011111 beside the same reference, kept its Task (it was 409 before the
subject was compared by its literal part) and the ServiceRequest then named two
patients. Two identifiers beside a reference nothing here can check must agree: else
409 ``inbound.referral-mismatch``, nothing stored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, NSCH_TOKEN, counts, partner, signer
from .test_adversarial_identity import NSCH_MRN, PATIENT

A_MRN = {"system": NSCH_MRN, "value": "0098765"}  # 许嘉玮's
OTHER_MRN = {"system": NSCH_MRN, "value": "0011111"}  # 陈美玲's
REFERENCES = {
    "unstored": "Patient/p-1",
    "partner-server": "https://fhir.nsch.example.cn/fhir/Patient/p-1",
}


def _referral_for(referral: dict[str, Any], reference: str, ident: dict[str, str] | None,
                  n: int) -> dict[str, Any]:  # fmt: skip
    """The referral without its Patient entry, its records naming ``reference`` (and
    the ServiceRequest ``ident`` beside it); Bundle number ``n``."""
    url = referral["entry"][PATIENT]["fullUrl"]
    text = orjson.dumps(referral).decode().replace(f'"{url}"', f'"{reference}"')
    bundle: dict[str, Any] = orjson.loads(text)
    del bundle["entry"][PATIENT]
    bundle["identifier"]["value"] = f"NSCH-SUBJECT-{n}"
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest" and ident is not None:
            entry["resource"]["subject"]["identifier"] = ident
    return bundle


def _post(client: Client, bundle: dict[str, Any], pki: Path) -> Any:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    return client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))


@pytest.mark.parametrize("where", list(REFERENCES))
def test_a_resend_naming_another_patients_number_beside_an_unchecked_reference_is_refused(
    client: Client, hk_settings: Any, referral: dict[str, Any], pki: Path, where: str
) -> None:
    reference = REFERENCES[where]
    first = _post(client, _referral_for(referral, reference, A_MRN, 1), pki)
    assert first.status_code == 200, first.text
    [task] = [e["resource"] for e in client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]]
    before = counts(hk_settings)
    resp = _post(client, _referral_for(referral, reference, OTHER_MRN, 2), pki)
    assert resp.status_code == 409, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.referral-mismatch"
    assert "0011111" not in resp.text and "0098765" not in resp.text
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    sr = client.get(f"/fhir/{task['focus']['reference']}", headers=LOCAL_AUTH).json()
    assert sr["subject"]["identifier"] == A_MRN  # still 许嘉玮's alone


@pytest.mark.parametrize("where", list(REFERENCES))
@pytest.mark.parametrize(
    ("first", "again"),
    [(A_MRN, A_MRN), (None, A_MRN), (A_MRN, None)],
    ids=["the-same", "added", "dropped"],
)
def test_a_resend_that_agrees_beside_an_unchecked_reference_keeps_its_task(
    client: Client, referral: dict[str, Any], pki: Path, where: str,
    first: dict[str, str] | None, again: dict[str, str] | None,
) -> None:  # fmt: skip
    reference = REFERENCES[where]
    assert _post(client, _referral_for(referral, reference, first, 1), pki).status_code == 200
    resp = _post(client, _referral_for(referral, reference, copy.deepcopy(again), 2), pki)
    assert resp.status_code == 200, resp.text
    assert len(client.get("/fhir/Task", headers=LOCAL_AUTH).json()["entry"]) == 1
