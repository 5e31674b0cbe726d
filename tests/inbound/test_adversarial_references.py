"""Adversarial review of absolute references in what partners send: a reference such as
``https://other.example/fhir/Patient/1`` was stored as sent, so a local system following
it went to a server nobody here vouches for (and a ``Patient/p1`` inside an entry whose
fullUrl is ``https://…/Condition/c1`` was read as a resource of ours, not as the Bundle's
entry it names). Now, after FHIR R4's rules (bundle.html#references, http.html#trules):
an entry's fullUrl is that entry; a relative reference is read against its entry's
server base (that server's, the entry or not); this gateway's own base is made relative
(and checked as such); the
sending partner's own FHIR base is kept; anything else is 422
``inbound.external-reference`` naming the element, nothing stored."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.inbound import Inbound, PartnerAuth, Resources
from gateway.signing import sign_bundle
from gateway.store import open_store

from .conftest import NOTHING, PUBLIC_URL, counts, signer

NSCH_FHIR = "https://fhir.nsch.example.cn/fhir"  # NSCH's base in seeds/partners.yaml
MRN = {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0098765"}
PATIENT = {"resourceType": "Patient", "identifier": [MRN], "name": [{"text": "许嘉玮"}]}


def _bundle(subject: str, n: int, *, with_patient: bool = False) -> dict[str, Any]:
    """NSCH's transaction: a Condition of 许嘉玮 whose subject is ``subject`` (and, with
    ``with_patient``, the Patient and the Condition under server fullUrls)."""
    condition = {
        "resourceType": "Condition",
        "identifier": [{"system": "https://fhir.nsch.example.cn/sid/diagnosis",
                        "value": f"REF-TEST-{n}"}],
        "code": {"text": "冠状动脉粥样硬化性心脏病"},
        "subject": {"reference": subject},
    }  # fmt: skip
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{NSCH_FHIR}/Condition/c{n}"
            if with_patient
            else f"urn:uuid:{n:08d}-1111-4111-8111-111111111111",
            "resource": condition,
            "request": {"method": "POST", "url": "Condition"},
        }
    ]
    if with_patient:
        entries.insert(0, {
            "fullUrl": f"{NSCH_FHIR}/Patient/p1",
            "resource": {**copy.deepcopy(PATIENT), "id": "p1"},
            "request": {"method": "PUT",
                        "url": f"Patient?identifier={MRN['system']}|{MRN['value']}"},
        })  # fmt: skip
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/hl7v2-message",
                       "value": f"NSCH-REFS-{n}"},
        "entry": entries,
    }  # fmt: skip


def _send(settings: Settings, pki: Path, bundle: dict[str, Any]) -> Any:
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    store = open_store(settings)
    try:
        return Inbound(settings, store).receive(body, PartnerAuth("nsch", "bearer"))
    finally:
        store.close()


def _stored_subject(settings: Settings, answer: Any) -> str:
    location = next(
        e["response"]["location"]
        for e in answer.body["entry"]
        if e["response"]["location"].startswith("Condition/")
    )
    store = open_store(settings)
    try:
        found = Resources(store).read("Condition", location.split("/")[1])
    finally:
        store.close()
    assert found is not None
    return str(found.resource["subject"]["reference"])


@pytest.mark.parametrize(
    "subject",
    [
        "https://other.example/fhir/Patient/1",  # another server
        f"{NSCH_FHIR}-evil/Patient/1",  # beside the partner's base, not under it
        f"{NSCH_FHIR}/Patient?identifier=x|1",  # under it, but no Type/id
        "http://fhir.nsch.example.cn/fhir/Patient/1",  # another scheme
        "urn:oid:1.2.3.4",  # no entry's fullUrl
    ],
)
def test_an_absolute_reference_elsewhere_is_refused(
    hk_settings: Settings, pki: Path, subject: str
) -> None:
    answer = _send(hk_settings, pki, _bundle(subject, 1))
    assert answer.status == 422, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.external-reference"
    assert issue["expression"] == ["Bundle.entry[0].resource.subject"]
    assert "other.example" not in issue["diagnostics"] and "1.2.3.4" not in issue["diagnostics"]
    stored = counts(hk_settings)
    assert {k: stored[k] for k in NOTHING} == NOTHING


def test_the_partners_own_server_is_kept_as_sent(hk_settings: Settings, pki: Path) -> None:
    answer = _send(hk_settings, pki, _bundle(f"{NSCH_FHIR}/Patient/1", 2))
    assert answer.status == 200, answer.body
    assert _stored_subject(hk_settings, answer) == f"{NSCH_FHIR}/Patient/1"


def test_this_gateways_base_is_made_relative_and_checked(hk_settings: Settings, pki: Path) -> None:
    first = _send(hk_settings, pki, _bundle(f"{NSCH_FHIR}/Patient/p1", 3, with_patient=True))
    assert first.status == 200, first.body
    patient = next(
        e["response"]["location"].split("/_history")[0]
        for e in first.body["entry"]
        if e["response"]["location"].startswith("Patient/")
    )
    answer = _send(hk_settings, pki, _bundle(f"{PUBLIC_URL}/fhir/{patient}", 4))
    assert answer.status == 200, answer.body
    assert _stored_subject(hk_settings, answer) == patient
    # ... and checked as a relative one: another institution's Patient is not NSCH's
    store = open_store(hk_settings)
    try:
        with store.engine.begin() as conn:
            ours, _ = Resources(store).write(conn, {"resourceType": "Patient"}, partner="hkpmc")
    finally:
        store.close()
    refused = _send(hk_settings, pki, _bundle(f"{PUBLIC_URL}/fhir/{ours.reference}", 5))
    assert refused.status == 422, refused.body
    assert refused.body["issue"][0]["details"]["coding"][0]["code"] == (
        "inbound.unresolved-reference"
    )


def test_a_relative_reference_is_read_against_its_entrys_server(
    hk_settings: Settings, pki: Path
) -> None:
    """``Patient/p1`` inside ``https://fhir.nsch.example.cn/fhir/Condition/c6`` is the
    entry ``https://fhir.nsch.example.cn/fhir/Patient/p1`` of the Bundle."""
    answer = _send(hk_settings, pki, _bundle("Patient/p1", 6, with_patient=True))
    assert answer.status == 200, answer.body
    patient = next(
        e["response"]["location"].split("/_history")[0]
        for e in answer.body["entry"]
        if e["response"]["location"].startswith("Patient/")
    )
    assert patient != "Patient/p1"  # stored under an id of ours
    assert _stored_subject(hk_settings, answer) == patient


def _in_server_entry(subject: str, full_url: str, n: int) -> dict[str, Any]:
    bundle = _bundle(subject, n)
    bundle["entry"][0]["fullUrl"] = full_url
    return bundle


def test_a_relative_reference_to_no_entry_is_its_entrys_servers(
    hk_settings: Settings, pki: Path
) -> None:
    """``Patient/p9`` inside ``https://fhir.nsch.example.cn/fhir/Condition/c7``, the
    Bundle holding no ``…/Patient/p9``, is NSCH's Patient p9 (R4: the entry's base +
    Type/id), kept as that absolute URL. It was stored as ``Patient/p9``, a Patient of
    this gateway's store: another patient, whom the one-patient check did not compare."""
    answer = _send(hk_settings, pki, _in_server_entry("Patient/p9", f"{NSCH_FHIR}/Condition/c7", 7))
    assert answer.status == 200, answer.body
    assert _stored_subject(hk_settings, answer) == f"{NSCH_FHIR}/Patient/p9"


def test_a_relative_reference_in_another_servers_entry_is_refused(
    hk_settings: Settings, pki: Path
) -> None:
    """Inside an entry whose fullUrl is a server neither this gateway's nor the
    partner's, ``Patient/p9`` is that server's: refused as any reference to it is."""
    bundle = _in_server_entry("Patient/p9", "https://other.example/fhir/Condition/c8", 8)
    before = counts(hk_settings)
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 422, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.external-reference"
    assert issue["expression"] == ["Bundle.entry[0].resource.subject"]
    assert counts(hk_settings) == before


def test_a_relative_reference_in_an_entry_under_this_gateways_base_is_ours(
    hk_settings: Settings, pki: Path
) -> None:
    """Under this gateway's base the entry's server is this one: ``Patient/<id>`` is the
    Patient stored here, as in a urn:uuid entry."""
    first = _send(hk_settings, pki, _bundle(f"{NSCH_FHIR}/Patient/p1", 9, with_patient=True))
    assert first.status == 200, first.body
    patient = next(
        str(e["response"]["location"]).split("/_history")[0]
        for e in first.body["entry"]
        if str(e["response"]["location"]).startswith("Patient/")
    )
    bundle = _in_server_entry(patient, f"{PUBLIC_URL}/fhir/Condition/c10", 10)
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 200, answer.body
    assert _stored_subject(hk_settings, answer) == patient
