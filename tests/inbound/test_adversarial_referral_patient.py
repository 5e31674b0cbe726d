"""Adversarial review of referral status, the patient side: NSCH sent its referral
REF20260618001 for 许嘉玮 (許嘉瑋) to HKPMC. The number was matched alone, so a Task
from HKPMC about REF20260618001 *for another patient* (陈美玲, whose referral reused
the number, or a Task naming no patient at all) was stored and listed as 许嘉玮's
referral status. A status now counts only when its ``Task.for`` shares an identifier
with the patient the outbox sent that referral for (``outbox_links.patients``,
hashed); else 409 ``inbound.referral-mismatch`` naming ``Task.for``, nothing stored.
On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.inbound import Inbound, PartnerAuth, Referrals, Resources
from gateway.signing import sign_bundle
from gateway.store import open_store
from tests.store.dbs import BACKENDS, database

from .conftest import MRN, OTHER_MRN, REFERRAL_SYSTEM, counts, make_home, record_sent, signer
from .test_adversarial_status import REFERRAL, _status

HKPMC = "hkpmc-partner-token-0123456789abcdef"


@pytest.fixture(params=BACKENDS)
def nsch(request: pytest.FixtureRequest, tmp_path: Path, pki: Path) -> Iterator[Settings]:
    """NSCH's gateway, on each database, which sent the referral to HKPMC for 许嘉玮."""
    for url in database(request.param, tmp_path):
        settings = make_home(tmp_path / "nsch", pki, "nsch", {"hkpmc": HKPMC})
        toml = settings.home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        settings = Settings.load(home=settings.home, env={})
        record_sent(settings, "hkpmc", REFERRAL, MRN)
        yield settings


def _receive(settings: Settings, body: bytes) -> Any:
    store = open_store(settings)
    try:
        return Inbound(settings, store).receive(body, PartnerAuth("hkpmc", "bearer"))
    finally:
        store.close()


def _listed(settings: Settings) -> list[tuple[str | None, str | None, str]]:
    store = open_store(settings)
    try:
        found = Referrals(settings, store).list(direction="sent")
    finally:
        store.close()
    return [(r.partner, r.referral, r.status) for r in found]


def _refused_for(answer: Any) -> None:
    """409 referral-mismatch naming the Task's ``for``, without patient data."""
    assert answer.status == 409, answer.body
    issue = answer.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.referral-mismatch"
    assert issue["expression"] == ["Bundle.entry[0].resource.for"]
    text = orjson.dumps(answer.body).decode()
    for secret in (MRN[1], OTHER_MRN[1], "REF20260618001", "许嘉玮", "陈美玲"):
        assert secret not in text


def test_a_status_for_another_patient_is_refused(nsch: Settings, pki: Path) -> None:
    other = _receive(nsch, _status(pki, "hkpmc", "rejected", patient=OTHER_MRN))
    _refused_for(other)
    assert counts(nsch)["inbound_resources"] == 0
    assert _listed(nsch) == []
    # the referral's own patient: stored and listed
    accepted = _receive(nsch, _status(pki, "hkpmc", "accepted", patient=MRN))
    assert accepted.status == 200, accepted.body
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]
    # ... and another patient's status never overtakes it
    _refused_for(_receive(nsch, _status(pki, "hkpmc", "completed", patient=OTHER_MRN)))
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]


def test_a_status_naming_no_patient_is_refused(nsch: Settings, pki: Path) -> None:
    _refused_for(_receive(nsch, _status(pki, "hkpmc", "accepted", patient=None)))
    # a literal reference to a Patient of ours says nothing the outbox can compare
    literal = _status(pki, "hkpmc", "accepted", patient=None,
                      task_for={"reference": "Patient/123"})  # fmt: skip
    _refused_for(_receive(nsch, literal))
    assert counts(nsch)["inbound_resources"] == 0


def _with_patient(
    pki: Path, status: str, patient: tuple[str, str], also: tuple[str, str] | None = None
) -> bytes:
    """HKPMC's status whose ``for`` names a Patient entry of the Bundle (``patient``),
    and the identifier ``also`` when given."""
    url = "urn:uuid:0f9c1d2e-3b4a-4c5d-8e6f-7a8b9c0d1e2f"
    task_for: dict[str, Any] = {"reference": url}
    if also is not None:
        task_for["identifier"] = {"system": also[0], "value": also[1]}
    bundle = orjson.loads(_status(pki, "hkpmc", status, patient=None, task_for=task_for))
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Task"]
    bundle.pop("signature", None)  # signed again below, with the Patient
    names = {MRN: "许嘉玮", OTHER_MRN: "陈美玲"}
    bundle["entry"].append({
        "fullUrl": url,
        "resource": {"resourceType": "Patient", "name": [{"text": names[patient]}],
                     "identifier": [{"system": patient[0], "value": patient[1]}]},
        "request": {"method": "PUT", "url": f"Patient?identifier={patient[0]}|{patient[1]}"},
    })  # fmt: skip
    return orjson.dumps(sign_bundle(bundle, signer(pki, "hkpmc"), "author"))


def test_a_patient_entry_or_a_conditional_reference_names_the_patient(
    nsch: Settings, pki: Path
) -> None:
    answer = _receive(nsch, _with_patient(pki, "accepted", MRN))
    assert answer.status == 200, answer.body
    _refused_for(_receive(nsch, _with_patient(pki, "completed", OTHER_MRN)))
    wrong = {"reference": f"Patient?identifier={OTHER_MRN[0]}|{OTHER_MRN[1]}"}
    _refused_for(_receive(nsch, _status(pki, "hkpmc", "completed", patient=None, task_for=wrong)))
    right = {"reference": f"Patient?identifier={MRN[0]}|{MRN[1]}"}  # the one stored above
    answer = _receive(nsch, _status(pki, "hkpmc", "completed", patient=None, task_for=right))
    assert answer.status == 200, answer.body
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "completed")]


def test_a_number_sent_for_two_patients_takes_no_status(nsch: Settings, pki: Path) -> None:
    """The same referral number carried to HKPMC for 许嘉玮 and for 陈美玲: a status
    cannot say whose referral it changes, so neither patient's is taken."""
    record_sent(nsch, "hkpmc", REFERRAL, OTHER_MRN)
    for patient in (MRN, OTHER_MRN):
        _refused_for(_receive(nsch, _status(pki, "hkpmc", "accepted", patient=patient)))
    assert counts(nsch)["inbound_resources"] == 0


def test_a_referral_sent_without_its_patient_takes_no_status(nsch: Settings, pki: Path) -> None:
    other = (REFERRAL_SYSTEM, "REF20260618002")
    record_sent(nsch, "hkpmc", other, None)  # as queued with no patient identifier
    _refused_for(_receive(nsch, _status(pki, "hkpmc", "accepted", other, patient=MRN)))


def test_another_patients_status_stored_before_is_never_listed(nsch: Settings, pki: Path) -> None:
    # as a gateway before this fix stored them: HKPMC's Tasks for another patient, and
    # naming none (every status before this fix), about the referral
    store = open_store(nsch)
    try:
        for patient in (OTHER_MRN, None):
            body = _status(pki, "hkpmc", "rejected", patient=patient)
            task = orjson.loads(body)["entry"][0]["resource"]
            with store.engine.begin() as conn:
                Resources(store).write(conn, task, partner="hkpmc")
            assert Referrals(nsch, store).list(direction="sent") == []
    finally:
        store.close()
    assert _listed(nsch) == []


def test_the_patient_is_hashed_as_the_outbox_keeps_it() -> None:
    """task_patients hashes as delivery's patient_ref (outbox_links.patients)."""
    from gateway.delivery._links import patient_ref
    from gateway.inbound._referrals import task_patients

    task = {"for": {"type": "Patient", "identifier": {"system": MRN[0], "value": MRN[1]}}}
    assert task_patients(task, {}) == {patient_ref(*MRN)}


def test_for_naming_two_patients_is_refused(nsch: Settings, pki: Path) -> None:
    """``Task.for`` with 许嘉玮's identifier (the referral's patient) and a reference to
    a Patient entry of the Bundle that is another patient (陈美玲) passed on the
    identifier, and the Task was stored with ``for`` pointing at 陈美玲's Patient: her
    record showed 许嘉玮's referral status. Every patient ``for`` names must be the
    referral's."""
    _refused_for(_receive(nsch, _with_patient(pki, "accepted", OTHER_MRN, also=MRN)))
    assert counts(nsch)["inbound_resources"] == 0 and _listed(nsch) == []
    # the referral's own patient in the entry, beside the identifier: stored
    assert _receive(nsch, _with_patient(pki, "accepted", MRN, also=MRN)).status == 200
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]


def test_for_with_a_reference_outside_the_bundle_is_refused(nsch: Settings, pki: Path) -> None:
    """``Task.for`` with 许嘉玮's identifier beside ``Patient/<id>``, a Patient not in the
    Bundle: the reference was not compared with anything, so the identifier alone let a
    Task pointing at another stored patient through. A patient that cannot be seen is
    none: refused as naming no patient identifier."""
    task_for = {"reference": "Patient/8c1f", "identifier": {"system": MRN[0], "value": MRN[1]}}
    _refused_for(_receive(nsch, _status(pki, "hkpmc", "accepted", patient=None, task_for=task_for)))
    assert counts(nsch)["inbound_resources"] == 0 and _listed(nsch) == []
