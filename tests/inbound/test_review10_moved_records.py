"""Review of safe13 (false refusal): a partner corrects two records it filed under the
wrong patient -- 陈美玲's diagnosis, and the diagnosis it cites as evidence, both sent
first under 许嘉玮 -- by one transaction updating both to her Patient. When the citing
record came first, the citation was compared with the cited record's stored version
(still his) and the transaction refused (422 identity-mismatch) though the same
transaction moves it too; the other order went through. A record this transaction
writes is the one-patient check's (its patient is the Bundle's), in any order."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH, OTHER_MRN
from .test_adversarial_identity import _post

PATIENT, CITING, CITED, SERVICE_REQUEST = 2, 7, 8, 9  # entries of the golden referral


@pytest.mark.parametrize("citing_first", [True, False])
def test_records_moved_to_the_right_patient_together_in_any_order(
    client: Client, referral: dict[str, Any], pki: Path, citing_first: bool
) -> None:
    first = copy.deepcopy(referral)
    cited_url = first["entry"][CITED]["fullUrl"]
    first["entry"][CITING]["resource"]["evidence"] = [{"detail": [{"reference": cited_url}]}]
    resp = _post(client, first, pki)
    assert resp.status_code == 200, resp.text
    where = [str(e["response"]["location"]).split("/_history")[0] for e in resp.json()["entry"]]

    fix = copy.deepcopy(first)
    fix["identifier"]["value"] = "NSCH-REFILED-1"
    patient = fix["entry"][PATIENT]
    patient["resource"]["identifier"] = [{"system": OTHER_MRN[0], "value": OTHER_MRN[1]}]
    patient["resource"]["name"] = [{"text": "陈美玲"}, {"text": "陳美玲"}]
    patient["request"]["ifNoneExist"] = f"identifier={OTHER_MRN[0]}|{OTHER_MRN[1]}"
    citing, cited = fix["entry"][CITING], fix["entry"][CITED]
    citing["request"] = {"method": "PUT", "url": where[CITING]}
    cited["request"] = {"method": "PUT", "url": where[CITED]}
    citing["resource"]["evidence"] = [{"detail": [{"reference": where[CITED]}]}]
    moved = (PATIENT, CITING, CITED, SERVICE_REQUEST)
    others = [e for k, e in enumerate(fix["entry"]) if k not in moved]
    fix["entry"] = [*others, patient, *((citing, cited) if citing_first else (cited, citing))]
    resp = _post(client, fix, pki)
    assert resp.status_code == 200, resp.text
    her = next(
        str(e["response"]["location"]).split("/_history")[0]
        for e in resp.json()["entry"]
        if str(e["response"]["location"]).startswith("Patient/")
    )
    assert her != where[PATIENT]
    for record in (where[CITING], where[CITED]):
        kept = client.get(f"/fhir/{record}", headers=LOCAL_AUTH).json()
        assert kept["subject"]["reference"] == her
