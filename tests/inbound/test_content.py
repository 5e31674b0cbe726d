"""The one-patient check (``gateway/inbound/_content.py``) keys a patient reference by
the resource it names, as the Bundle is applied (``_apply.py``: ``read_against``,
``reference_key``). It keyed ``https://<any server>/fhir/Patient/X`` as ``Patient/X``,
so a Bundle whose order names 许嘉玮, stored here as ``Patient/X``, and whose report
names the Patient X of another server (someone else) passed as one patient's, and was
stored when that server is the partner's own. Now: this gateway's ``Patient/X``
(relative, or under its base however spelled) is one key; another server's is its URL
as RFC 3986 compares servers; a relative ``Patient/X`` inside an entry whose fullUrl is
a server URL is that server's (FHIR R4 bundle.html#references)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from gateway import Settings
from gateway.inbound import Resources
from gateway.store import open_store

from .conftest import PUBLIC_URL, counts
from .test_adversarial_references import MRN, NSCH_FHIR, PATIENT, _send

OTHER_FHIR = "https://other.example/fhir"
LOINC = "http://loinc.org"
REPORT_CODE = {"coding": [{"system": LOINC, "code": "18748-4"}], "text": "影像检查报告"}


def _urn(n: int) -> str:
    return f"urn:uuid:{n:08d}-5555-4555-8555-555555555555"


def _order(subject: Any, full_url: str, n: int) -> dict[str, Any]:
    """NSCH's ServiceRequest (a CT order) about ``subject``."""
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "ServiceRequest",
            "identifier": [{"system": "https://fhir.nsch.example.cn/sid/order",
                            "value": f"KEY-SR-{n}"}],
            "status": "active",
            "intent": "order",
            "code": {"text": "胸部CT平扫"},
            "subject": subject if isinstance(subject, dict) else {"reference": subject},
        },
        "request": {"method": "POST", "url": "ServiceRequest"},
    }  # fmt: skip


def _report(subject: Any, full_url: str, n: int) -> dict[str, Any]:
    """NSCH's DiagnosticReport about ``subject``."""
    return {
        "fullUrl": full_url,
        "resource": {
            "resourceType": "DiagnosticReport",
            "identifier": [{"system": "https://fhir.nsch.example.cn/sid/report",
                            "value": f"KEY-DR-{n}"}],
            "status": "final",
            "code": REPORT_CODE,
            "subject": subject if isinstance(subject, dict) else {"reference": subject},
            "conclusion": "双肺未见明显异常。",
        },
        "request": {"method": "POST", "url": "DiagnosticReport"},
    }  # fmt: skip


def _bundle(n: int, *entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/hl7v2-message",
                       "value": f"NSCH-KEYS-{n}"},
        "entry": list(entries),
    }  # fmt: skip


def _stored_x(settings: Settings, pki: Path) -> None:
    """许嘉玮, stored here by NSCH as ``Patient/X`` (``PUT Patient/X``)."""
    entry = {
        "fullUrl": _urn(1),
        "resource": {**copy.deepcopy(PATIENT), "id": "X"},
        "request": {"method": "PUT", "url": "Patient/X"},
    }
    answer = _send(settings, pki, _bundle(1, entry))
    assert answer.status == 200, answer.body


def _refused_at(settings: Settings, answer: Any, before: dict[str, int], where: str) -> None:
    assert answer.status == 422, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.mixed-patients"
    assert issue["expression"] == [where]
    assert "other.example" not in issue["diagnostics"]  # places, never the values
    assert counts(settings) == before


def _subjects(settings: Settings, answer: Any) -> list[str]:
    """The stored subject of each record the answer names, in the Bundle's order."""
    store = open_store(settings)
    try:
        out = []
        for entry in answer.body["entry"]:
            kind, ident = str(entry["response"]["location"]).split("/")[:2]
            if kind in ("ServiceRequest", "DiagnosticReport"):
                found = Resources(store).read(kind, ident)
                assert found is not None
                out.append(str(found.resource["subject"]["reference"]))
        return out
    finally:
        store.close()


@pytest.mark.parametrize(
    "theirs",
    [
        f"{OTHER_FHIR}/Patient/X",  # a server nobody here vouches for
        f"{NSCH_FHIR}/Patient/X",  # the partner's own server: it was stored
        "HTTPS://FHIR.NSCH.EXAMPLE.CN:443/fhir/Patient/X/_history/2",  # spelled otherwise
    ],
)
@pytest.mark.parametrize("first", ["ours", "theirs"])
def test_another_servers_patient_of_the_same_id_is_a_second_patient(
    hk_settings: Settings, pki: Path, theirs: str, first: str
) -> None:
    _stored_x(hk_settings, pki)
    before = counts(hk_settings)
    subjects = ["Patient/X", theirs] if first == "ours" else [theirs, "Patient/X"]
    bundle = _bundle(2, _order(subjects[0], _urn(2), 2), _report(subjects[1], _urn(3), 2))
    answer = _send(hk_settings, pki, bundle)
    _refused_at(hk_settings, answer, before, "Bundle.entry[1].resource.subject")


def test_a_relative_reference_inside_a_partner_server_entry_is_that_servers(
    hk_settings: Settings, pki: Path
) -> None:
    """``Patient/X`` in ``https://fhir.nsch.example.cn/fhir/DiagnosticReport/r3`` is
    NSCH's Patient X (R4: read against the entry's fullUrl), not the ``Patient/X`` the
    order in a urn:uuid entry names (this gateway's: 许嘉玮)."""
    _stored_x(hk_settings, pki)
    before = counts(hk_settings)
    bundle = _bundle(
        3,
        _order("Patient/X", _urn(4), 3),
        _report("Patient/X", f"{NSCH_FHIR}/DiagnosticReport/r3", 3),
    )
    answer = _send(hk_settings, pki, bundle)
    _refused_at(hk_settings, answer, before, "Bundle.entry[1].resource.subject")


def test_partner_entries_naming_each_other_relatively_are_one_patient(
    hk_settings: Settings, pki: Path
) -> None:
    """A partner's Bundle under its own server's fullUrls, its records naming its
    Patient entry ``Patient/p1`` (relative: that server's, the entry), and one naming
    it by an absolute URL spelled otherwise: one patient. The Patient entry has no
    ``id``, so ``Patient/p1`` read as this gateway's was refused as a second patient."""
    patient = {
        "fullUrl": f"{NSCH_FHIR}/Patient/p1",
        "resource": copy.deepcopy(PATIENT),
        "request": {"method": "PUT", "url": f"Patient?identifier={MRN['system']}|{MRN['value']}"},
    }
    bundle = _bundle(
        4,
        patient,
        _order("Patient/p1", f"{NSCH_FHIR}/ServiceRequest/s4", 4),
        _report("Patient/p1", f"{NSCH_FHIR}/DiagnosticReport/r4", 4),
        _report("https://FHIR.nsch.example.cn:443/fhir/Patient/p1", _urn(5), 5),
    )
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 200, answer.body
    stored = str(answer.body["entry"][0]["response"]["location"]).split("/_history")[0]
    assert stored.startswith("Patient/") and stored != "Patient/p1"  # an id of ours
    assert _subjects(hk_settings, answer) == [stored, stored, stored]


def test_this_gateways_base_and_a_relative_reference_of_one_id_are_one_patient(
    hk_settings: Settings, pki: Path
) -> None:
    """``Patient/X``, ``http://GW:80/fhir/Patient/X`` (this gateway's base spelled
    otherwise) and ``Patient/X`` inside an entry whose fullUrl is under this gateway's
    base all name the Patient X stored here: one patient, stored as ``Patient/X``."""
    _stored_x(hk_settings, pki)
    bundle = _bundle(
        6,
        _order("Patient/X", _urn(6), 6),
        _report("http://GW:80/fhir/Patient/X", _urn(7), 6),
        _report("Patient/X", f"{PUBLIC_URL}/fhir/DiagnosticReport/r7", 7),
    )
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 200, answer.body
    assert _subjects(hk_settings, answer) == ["Patient/X"] * 3


@pytest.mark.parametrize("after_base", ["#", "?a="])
def test_a_fragment_or_query_after_this_gateways_base_in_a_fullurl_is_no_base_of_ours(
    hk_settings: Settings, pki: Path, after_base: str
) -> None:
    """``Patient/X`` inside ``http://gw/fhir/#/DiagnosticReport/r8`` was read by the
    one-patient check as the Patient X stored here (the base under ours) while apply
    stored its subject as ``#/Patient/X`` (what follows our base, a fragment): a report
    of 许嘉玮 stored naming no patient. A fragment or query is no base: refused."""
    _stored_x(hk_settings, pki)
    before = counts(hk_settings)
    full_url = f"{PUBLIC_URL}/fhir/{after_base}/DiagnosticReport/r8"
    bundle = _bundle(8, _order("Patient/X", _urn(8), 8), _report("Patient/X", full_url, 8))
    answer = _send(hk_settings, pki, bundle)
    _refused_at(hk_settings, answer, before, "Bundle.entry[1].resource.subject")


def test_another_servers_patient_with_this_patients_mrn_beside_it_is_a_second_patient(
    hk_settings: Settings, pki: Path
) -> None:
    """Decided: an identifier beside another server's literal ``Patient/X`` does not make
    it the patient stored here. The record would be kept pointing at that server's
    Patient (as sent), whose identifiers nothing here can read; the MRN beside it is the
    sender's word alone. Beside a reference to 许嘉玮 it is a second patient, refused at
    that reference; refer to the Bundle's patient (its entry, or ``Patient/X``)."""
    _stored_x(hk_settings, pki)
    before = counts(hk_settings)
    theirs = {"reference": f"{NSCH_FHIR}/Patient/X", "identifier": MRN}
    bundle = _bundle(8, _order("Patient/X", _urn(8), 8), _report(theirs, _urn(9), 8))
    answer = _send(hk_settings, pki, bundle)
    _refused_at(hk_settings, answer, before, "Bundle.entry[1].resource.subject")


def test_the_partners_own_patient_alone_is_one_patient(hk_settings: Settings, pki: Path) -> None:
    """A Bundle about one Patient of the partner's server (its references all that
    one, however spelled, an MRN beside one) is one patient's: kept as sent."""
    _stored_x(hk_settings, pki)
    theirs = {"reference": f"{NSCH_FHIR}/Patient/X", "identifier": MRN}
    bundle = _bundle(
        10,
        _order(theirs, _urn(10), 10),
        _report("https://fhir.nsch.example.cn:443/fhir//Patient/X", _urn(11), 10),
    )
    answer = _send(hk_settings, pki, bundle)
    assert answer.status == 200, answer.body
    assert _subjects(hk_settings, answer) == [
        f"{NSCH_FHIR}/Patient/X",
        "https://fhir.nsch.example.cn:443/fhir//Patient/X",
    ]
