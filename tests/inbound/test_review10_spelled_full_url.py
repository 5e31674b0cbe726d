"""Review of safe13: an absolute reference to a Bundle entry whose ``fullUrl`` it spells
another way (the host in capitals, the default port written: the same URL as RFC 3986
§6.2.2-6.2.3 compare them) was no entry's: under the sending partner's base it was kept
as sent (the partner's server), so no identity check saw it, and 陈美玲's MRN beside a
subject naming 许嘉玮's Patient entry was stored with the record (filed under her MRN)
in the Bundle of his. It is that entry now: made literal, checked as any reference to
it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import Settings

from .conftest import counts
from .test_adversarial_references import NSCH_FHIR, _bundle, _send, _stored_subject

OTHER_MRN = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0012345"}
SPELLINGS = [
    "https://FHIR.NSCH.EXAMPLE.CN/fhir/Patient/p1",  # the host in capitals
    "https://fhir.nsch.example.cn:443/fhir/Patient/p1",  # the default port written
    "HTTPS://fhir.nsch.example.cn/fhir/Patient/p1",  # the scheme in capitals
]


@pytest.mark.parametrize("subject", SPELLINGS)
def test_another_patients_mrn_beside_an_entry_spelled_otherwise_is_refused(
    hk_settings: Settings, pki: Path, subject: str
) -> None:
    bundle = _bundle("x", 1, with_patient=True)  # the Patient entry at f"{NSCH_FHIR}/Patient/p1"
    bundle["entry"][1]["resource"]["subject"] = {"reference": subject, "identifier": OTHER_MRN}
    before = counts(hk_settings)
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 422, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.identity-mismatch"
    assert issue["expression"] == ["Bundle.entry[1].resource.subject.identifier"]
    assert "0012345" not in str(answer.body)
    assert counts(hk_settings) == before


@pytest.mark.parametrize("subject", SPELLINGS)
def test_an_entry_spelled_otherwise_is_that_entry(
    hk_settings: Settings, pki: Path, subject: str
) -> None:
    bundle = _bundle("x", 1, with_patient=True)
    assert bundle["entry"][0]["fullUrl"] == f"{NSCH_FHIR}/Patient/p1"
    bundle["entry"][1]["resource"]["subject"] = {"reference": subject}
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 200, answer.body
    patient = next(
        str(e["response"]["location"]).split("/_history")[0]
        for e in answer.body["entry"]
        if str(e["response"]["location"]).startswith("Patient/")
    )
    assert _stored_subject(hk_settings, answer) == patient
