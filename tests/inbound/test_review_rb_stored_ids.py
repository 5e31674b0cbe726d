"""The one-patient check's look-up of the sender's stored Patients (``_content.py``
``_stored_aliases``) read every ``Patient/<id>`` a Bundle cites in one statement: a
Bundle citing a quarter of a million ids (one evidence ``detail`` each) passed the
database's bound on bound parameters (SQLite 250,000 as Debian builds it; PostgreSQL
65,535) and was answered 500, where it was, and is, a Bundle of many patients (422
``inbound.mixed-patients``). Two ids are two patients whatever is stored under them:
only a single cited id is looked up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.api.test_app import Client

from .conftest import MRN
from .test_adversarial_identity import _post
from .test_review10_logical_asserter import _stored_patient
from .test_stored_patient_asserter import _cited_by_id


def test_a_bundle_citing_many_patient_ids_is_refused_as_mixed_not_a_server_error(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    patient = _stored_patient(client, referral, pki)
    bundle = _cited_by_id(referral, patient, MRN)
    details = [{"reference": f"Patient/p{n}"} for n in range(251_000)]
    bundle["entry"][0]["resource"]["evidence"] = [{"detail": details}]
    resp = _post(client, bundle, pki)
    assert resp.status_code == 422, resp.text[:500]
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
