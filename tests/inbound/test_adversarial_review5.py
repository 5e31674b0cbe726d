"""Adversarial review of the inbound identity checks (docs/inbound.md, "one patient"),
four holes left after ``Patient/<id>`` references nothing stores were checked:

* the same unstored id under two partners: NJMU2's records about its ``Patient/p-1``
  and NSCH's about its own (许嘉玮) were kept, and searched, as one patient's;
* spellings of a system the comparison missed (``%6Drn``, ``/./``, ``/x/../``, an
  empty port): 陈美玲's MRN beside 许嘉玮's reference went by as "another system";
* a record corrected in a Bundle (its MRN) was still held against the Bundle's later
  records by its replaced version: a false refusal of a legitimate correction;
* a stored Patient's MRN dropped, then another patient's added (each update compared
  with the stored version alone): 许嘉玮's records became 陈美玲's.

Each refusal is 422 ``inbound.identity-mismatch`` naming the element, nothing stored,
no patient data in the answer or the log."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.fhirsystems import system_key
from tests.api.test_app import Client
from tests.store.dbs import BACKENDS, database

from .conftest import LOCAL, LOCAL_AUTH, NJMU2_TOKEN, NSCH_TOKEN, counts, kept_by_njmu2, make_home
from .test_adversarial_identity import HKID, NSCH_MRN, _post, _refused
from .test_adversarial_referral_subject import _referral_for

A_MRN = {"system": NSCH_MRN, "value": "0098765"}  # 许嘉玮's
OTHER_MRN = {"system": NSCH_MRN, "value": "0011111"}  # 陈美玲's
A_HKID = {"system": HKID, "value": "K583726A"}  # 许嘉玮's
UNSTORED = "Patient/p-1"
DIAGNOSIS = "https://fhir.nsch.example.cn/sid/diagnosis"


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gateway")
    return caplog


def _bundle(n: int, *entries: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle", "type": "transaction",
        "identifier": {"system": "https://fhir.nsch.example.cn/sid/hl7v2-message",
                       "value": f"NSCH-REVIEW5-{n}"},
        "entry": list(entries),
    }  # fmt: skip


def _condition(code: str, ident: dict[str, str] | None, text: str = "冠心病") -> dict[str, Any]:
    """A conditional update of NSCH's diagnosis ``code`` for ``Patient/p-1``."""
    subject: dict[str, Any] = {"reference": UNSTORED}
    if ident is not None:
        subject["identifier"] = ident
    return {
        "resource": {"resourceType": "Condition", "code": {"text": text}, "subject": subject,
                     "identifier": [{"system": DIAGNOSIS, "value": code}]},
        "request": {"method": "PUT", "url": f"Condition?identifier={DIAGNOSIS}|{code}"},
    }  # fmt: skip


def _patient(n: int, identifiers: list[dict[str, str]], name: str = "许嘉玮") -> dict[str, Any]:
    """NSCH storing ``Patient/p-1`` (PUT by id) with ``identifiers``."""
    return _bundle(n, {
        "resource": {"resourceType": "Patient", "identifier": identifiers,
                     "name": [{"text": name}]},
        "request": {"method": "PUT", "url": UNSTORED},
    })  # fmt: skip


@pytest.mark.parametrize("ident", [A_MRN, None], ids=["beside-an-mrn", "alone"])
def test_an_unstored_patient_id_another_institutions_records_name_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, ident: dict[str, str] | None,
) -> None:  # fmt: skip
    kept_by_njmu2(hk_settings)
    before = counts(hk_settings)
    bundle = _referral_for(referral, UNSTORED, ident, 1)
    resp = _post(client, bundle, pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[6].resource.subject", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
    found = client.get("/fhir/Condition?patient=p-1", headers=LOCAL_AUTH).json()
    assert found.get("total", len(found.get("entry", []))) == 0


def test_an_unstored_patient_id_only_this_partner_names_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    resp = _post(client, _bundle(2, _condition("c1", A_MRN)), pki)
    assert resp.status_code == 200, resp.text


SPELLINGS = {
    "escaped-letter": "https://fhir.nsch.example.cn/sid/%6Drn",
    "dot-segment": "https://fhir.nsch.example.cn/sid/./mrn",
    "dot-dot-segment": "https://fhir.nsch.example.cn/sid/x/../mrn",
    "empty-port": "https://fhir.nsch.example.cn:/sid/mrn",
    "zero-padded-port": "https://fhir.nsch.example.cn:0443/sid/mrn",
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_another_mrn_in_another_spelling_beside_an_unstored_reference_is_refused(
    client: Client, hk_settings: Settings, referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture, spelling: str,
) -> None:  # fmt: skip
    assert _post(client, _referral_for(referral, UNSTORED, A_MRN, 1), pki).status_code == 200
    before = counts(hk_settings)
    other = {"system": SPELLINGS[spelling], "value": "0011111"}  # 陈美玲's
    resp = _post(client, _bundle(2, _condition("c1", other)), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.subject.identifier",
             logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        ("https://h.example/sid/mrn", "https://h.example/sid/%6Drn", True),
        ("https://h.example/sid/a%2fb", "https://h.example/sid/a%2Fb", True),
        ("https://h.example/sid/a%2Fb", "https://h.example/sid/a/b", False),  # not unreserved
        ("https://h.example/sid/mrn", "https://h.example/sid/./x/../mrn", True),
        ("https://h.example/sid/mrn", "https://h.example:/sid/mrn", True),
        ("https://h.example:8443/sid", "https://h.example:08443/sid", True),
        ("http://[::1]:80/sid", "http://[::1]/sid/", True),
        ("http://[2001:DB8::1]/sid", "http://[2001:db8::1]/sid", True),
        ("http://[::80]/sid", "http://[::]/sid", False),  # an address, not a port
        ("http://[::1]:8080/sid", "http://[::1]/sid", False),
        ("urn:OID:2.16.156.1", "urn:oid:2.16.156.1", True),
        ("/", "", False),  # a system, however odd, is never "no system"
    ],
)  # fmt: skip
def test_systems_compare_as_rfc_3986_normalises_them(one: str, other: str, same: bool) -> None:
    assert (system_key(one) == system_key(other)) is same


def test_a_record_corrected_with_another_record_in_one_bundle_is_stored(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    # NSCH kept 冠心病 for Patient/p-1 with a mistyped MRN beside it, then corrects it
    # and adds 高血压 with the right one: the replaced version names nobody any more
    assert _post(client, _bundle(1, _condition("c1", A_MRN)), pki).status_code == 200
    fixed = _bundle(2, _condition("c1", OTHER_MRN), _condition("c2", OTHER_MRN, "高血压"))
    resp = _post(client, fixed, pki)
    assert resp.status_code == 200, resp.text
    kept = client.get("/fhir/Condition?patient=p-1", headers=LOCAL_AUTH).json()["entry"]
    assert {e["resource"]["subject"]["identifier"]["value"] for e in kept} == {"0011111"}


def test_a_corrected_record_still_meets_the_records_it_did_not_replace(
    client: Client, hk_settings: Settings, pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    first = _bundle(1, _condition("c1", A_MRN), _condition("c2", A_MRN, "高血压"))
    assert _post(client, first, pki).status_code == 200
    resp = _post(client, _bundle(2, _condition("c1", OTHER_MRN)), pki)  # c2 still 许嘉玮's
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.subject.identifier",
             logs)  # fmt: skip


def test_a_patient_swapping_its_mrn_for_another_patients_in_two_updates_is_refused(
    client: Client, hk_settings: Settings, pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    assert _post(client, _patient(1, [A_MRN, A_HKID]), pki).status_code == 200
    assert _post(client, _bundle(2, _condition("c1", A_MRN)), pki).status_code == 200
    assert _post(client, _patient(3, [A_HKID]), pki).status_code == 200  # MRN dropped
    before = counts(hk_settings)
    resp = _post(client, _patient(4, [A_HKID, OTHER_MRN], "陈美玲"), pki)
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[0].resource.identifier", logs)
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]


def test_a_patient_that_renumbers_keeping_its_old_mrn_is_stored(client: Client, pki: Path) -> None:
    assert _post(client, _patient(1, [A_MRN]), pki).status_code == 200
    assert _post(client, _bundle(2, _condition("c1", A_MRN)), pki).status_code == 200
    renumbered = [{**A_MRN, "use": "old"}, {"system": NSCH_MRN, "value": "0098799"}, A_HKID]
    resp = _post(client, _patient(3, renumbered), pki)
    assert resp.status_code == 200, resp.text


@pytest.fixture(params=BACKENDS)
def db_client(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Path, converter: Converter
) -> Iterator[tuple[Client, Settings]]:
    """HKPMC on SQLite, and on PostgreSQL when GATEWAY_TEST_DATABASE_URL is set."""
    for url in database(request.param, tmp_path):
        home = make_home(
            tmp_path / "hkpmc", pki, "hkpmc", {"nsch": NSCH_TOKEN, "njmu2": NJMU2_TOKEN}
        ).home
        toml = home / "gateway.toml"
        toml.write_text(toml.read_text() + f'database_url = "{url}"\n')
        settings = Settings.load(home=home, env={})
        app = create_app(settings, converter, TokenSet([LOCAL]))
        try:
            yield Client(app), settings
        finally:
            app.state.fhir.close()


def test_the_identity_look_ups_on_each_database(
    db_client: tuple[Client, Settings], referral: dict[str, Any], pki: Path,
    logs: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    client, settings = db_client
    # a stored Patient whose MRN is swapped in two updates (the kept records read back)
    stored = {"reference": "Patient/p-2", "identifier": A_MRN}
    first = _patient(1, [A_MRN, A_HKID])
    first["entry"][0]["request"]["url"] = "Patient/p-2"
    record = _condition("c1", None)
    record["resource"]["subject"] = stored
    dropped = _patient(3, [A_HKID])
    dropped["entry"][0]["request"]["url"] = "Patient/p-2"
    swapped = _patient(4, [A_HKID, OTHER_MRN], "陈美玲")
    swapped["entry"][0]["request"]["url"] = "Patient/p-2"
    for bundle in (first, _bundle(2, record), dropped):
        assert _post(client, bundle, pki).status_code == 200
    _refused(_post(client, swapped, pki), "inbound.identity-mismatch",
             "Bundle.entry[0].resource.identifier", logs)  # fmt: skip
    # an unstored id another institution's records name
    kept_by_njmu2(settings)
    _refused(_post(client, _referral_for(referral, UNSTORED, A_MRN, 5), pki),
             "inbound.identity-mismatch", "Bundle.entry[6].resource.subject", logs)  # fmt: skip


def test_a_correction_a_batch_rolls_back_still_holds_the_records_mrn(
    client: Client, hk_settings: Settings, pki: Path, logs: pytest.LogCaptureFixture
) -> None:
    assert _post(client, _bundle(1, _condition("c1", A_MRN)), pki).status_code == 200
    failed = _condition("c1", OTHER_MRN)  # rolled back: its recorder is nobody's
    failed["resource"]["recorder"] = {"reference": f"Practitioner?identifier={DIAGNOSIS}|none"}
    bundle = _bundle(2, failed, _condition("c2", OTHER_MRN, "高血压"))
    bundle["type"] = "batch"
    before = counts(hk_settings)
    resp = _post(client, bundle, pki)  # c1 is still 许嘉玮's: c2 names another patient
    _refused(resp, "inbound.identity-mismatch", "Bundle.entry[1].resource.subject.identifier",
             logs)  # fmt: skip
    assert counts(hk_settings)["inbound_resources"] == before["inbound_resources"]
