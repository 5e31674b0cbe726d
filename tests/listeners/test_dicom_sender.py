"""A DICOM sender that authenticated as an institution sends in its own name only: a
STOW-RS by an API token bound to an institution, a C-STORE over TLS with a client
certificate. A study whose identifiers (IssuerOfPatientID, its qualifiers,
InstitutionName, the accession number's issuer) name another institution, one the
network does not know, or none, is refused whole, named by its Study UID, the tag and
both institutions; over STOW it is kept as rejected and never reprocessed. Tokens
without an institution, and listeners without client certificates, are unchanged."""

from __future__ import annotations

import io
import logging
import ssl
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from gateway import Converter
from gateway.api import TokenSet, create_app
from gateway.errors import GatewayError
from gateway.listeners.dicom import NOT_AUTHORIZED, SUCCESS, DicomSCP
from gateway.network import Network
from gateway.processing import process_message
from gateway.store import MessageFilter, Store
from tests._certs import Signer, certificate, make_ca, write_pem
from tests.golden.dicom.make_studies import issuer, part10, wang_wei

from .dicom_support import SCU_AE, dicom_settings, intake_for
from .test_dicom_stow import FAILED, REFERENCED, Api, multipart

LAX2_TOKEN = "stow-lax2-0123456789abcdef"  # a Lai'an PACS: bound to lax2
OPEN_TOKEN = "stow-open-0123456789abcdef"  # bound to no institution
STUDY = "2.16.156.10011.99.1.4.3.20260610.9"
LAX2_OID = "2.16.156.10011.99.1.4"
NSCH_OID = "2.16.156.10011.99.1.1"
QUALIFIERS = "IssuerOfPatientIDQualifiersSequence"
# 南沙医院's identifiers on 王伟's study: his images under another hospital's MRN
NSCH_IDS: dict[str, Any] = {
    "IssuerOfPatientID": "NSCH",
    "InstitutionName": "广州市第一人民医院南沙医院",
    "IssuerOfAccessionNumberSequence": issuer("NSCH"),
}


def _qualifiers(oid: str) -> list[Dataset]:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return [item]


def _study(study: str = STUDY, **attrs: Any) -> list[bytes]:
    return [part10(wang_wei(study, 1, n, **attrs)) for n in (1, 2)]


@pytest.fixture
def api(tmp_path: Path, converter: Converter, store: Store) -> Api:
    settings = dicom_settings(tmp_path)
    lines = [f"{LAX2_TOKEN} operator pacs-lax2 lax2", f"{OPEN_TOKEN} operator pacs-open"]
    tokens = TokenSet(lines, network=Network.load(settings.network))
    app = create_app(settings, converter, tokens)
    intake = app.state.dicom_intake = intake_for(settings, converter, store)
    return Api(app, intake)


def test_a_bound_token_files_its_own_institutions_study(api: Api) -> None:
    response = api.post("/dicomweb/studies", multipart(_study()), token=LAX2_TOKEN)
    assert response.status_code == 200, response.text
    assert len(response.json()[REFERENCED]["Value"]) == 2
    assert api.intake.pending() == [STUDY]
    commit = api.post(f"/dicomweb/studies/{STUDY}/$commit", token=LAX2_TOKEN)
    assert commit.json()["converted"] is True, commit.text


@pytest.mark.parametrize(
    ("attrs", "where", "named"),
    [
        (NSCH_IDS, "(0010,0021) IssuerOfPatientID", "institution nsch (NSCH)"),
        # the issuer as given by its OID only, the rest Lai'an's
        (
            {
                "IssuerOfPatientID": None,
                "IssuerOfPatientIDQualifiersSequence": _qualifiers(NSCH_OID),
            },
            "(0010,0024) IssuerOfPatientIDQualifiersSequence (0040,0032) UniversalEntityID",
            "institution nsch (NSCH)",
        ),
        # an MRN under an OID Nansha assigned below its own: Nansha's number too
        (
            {QUALIFIERS: _qualifiers(f"{NSCH_OID}.2")},
            "(0010,0024) IssuerOfPatientIDQualifiersSequence (0040,0032) UniversalEntityID",
            "institution nsch (NSCH)",
        ),
        (
            {"InstitutionName": "HK partner medical centre"},
            "(0008,0080) InstitutionName",
            "institution hkpmc",
        ),
        (
            {"IssuerOfAccessionNumberSequence": issuer("NJMU2")},
            "(0008,0051) IssuerOfAccessionNumberSequence (0040,0031) LocalNamespaceEntityID",
            "institution njmu2 (NJMU2)",
        ),
        ({"IssuerOfPatientID": "某某诊所"}, "(0010,0021) IssuerOfPatientID", "no institution"),
        (
            {
                "IssuerOfPatientID": None,
                "InstitutionName": None,
                "IssuerOfAccessionNumberSequence": None,
            },
            "(0010,0021) IssuerOfPatientID",
            "is empty",
        ),
    ],
    ids=["issuer", "issuer-oid", "issuer-oid-arc", "institution", "accession", "unknown", "empty"],
)
def test_a_bound_token_may_not_file_another_institutions_study(
    api: Api, attrs: dict[str, Any], where: str, named: str
) -> None:
    lax2 = _study(STUDY, InstanceNumber=1)
    other = _study("2.16.156.10011.99.1.4.3.20260610.10", **attrs)
    # one study of its own beside: the request is refused whole, nothing stored
    response = api.post("/dicomweb/studies", multipart(lax2 + other), token=LAX2_TOKEN)
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/fhir+json"
    [issue] = response.json()["issue"]
    text = issue["details"]["text"]
    assert issue["details"]["coding"][0]["code"] == "intake.dicom-sender-mismatch"
    assert text.startswith("study 2.16.156.10011.99.1.4.3.20260610.10: ")
    assert issue["location"] == [where] and issue["code"] == "forbidden"
    assert named in text and "institution lax2 (LAX2)" in text
    assert "王" not in text and "0012345" not in text  # no patient data
    assert api.intake.pending() == []
    # kept, refused, in the sender's name; its own study was not stored either
    [kept] = api.intake.store.find(MessageFilter(state="rejected")).items
    assert (kept.control_id, kept.sender, kept.channel, kept.auth_sender) == (
        "2.16.156.10011.99.1.4.3.20260610.10",
        "LAX2",
        "stow",
        "pacs-lax2",
    )


def test_a_refused_study_is_never_reprocessed(api: Api) -> None:
    other = "2.16.156.10011.99.1.4.3.20260610.11"
    response = api.post("/dicomweb/studies", multipart(_study(other, **NSCH_IDS)), token=LAX2_TOKEN)
    assert response.status_code == 403
    [kept] = api.intake.store.find(MessageFilter(state="rejected")).items
    with pytest.raises(GatewayError) as refused:
        process_message(api.intake.store, api.intake.converter, kept.id)
    assert refused.value.code == "store.sender-refused"
    assert "intake.dicom-sender-mismatch" in refused.value.issue.message
    assert "its identifiers name" in refused.value.issue.message
    # the commit of the study is not answered by the refusal: it was never received
    commit = api.post(f"/dicomweb/studies/{other}/$commit", token=LAX2_TOKEN)
    assert commit.status_code == 404, commit.text


def test_a_token_bound_to_no_institution_is_unchanged(api: Api) -> None:
    response = api.post("/dicomweb/studies", multipart(_study(**NSCH_IDS)), token=OPEN_TOKEN)
    assert response.status_code == 200, response.text
    assert FAILED not in response.json() and api.intake.pending() == [STUDY]
    assert api.intake.store.find(MessageFilter(state="rejected")).items == []


# -- C-STORE over TLS with client certificates ---------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Path, Signer]:
    """A CA, the SCP's certificate for localhost, and the files."""
    signer, ca = make_ca()
    key, cert = certificate("localhost", issuer=signer, ca=False, san=[x509.DNSName("localhost")])
    write_pem(tmp_path / "scp.crt", tmp_path / "scp.key", cert, key)
    (tmp_path / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return tmp_path, signer


@pytest.fixture
def tls_scp(pki: tuple[Path, Signer], converter: Converter, store: Store) -> Iterator[DicomSCP]:
    folder, _ = pki
    settings = dicom_settings(
        folder,
        dicom_tls_cert=str(folder / "scp.crt"),
        dicom_tls_key=str(folder / "scp.key"),
        dicom_tls_ca=str(folder / "ca.crt"),
    )
    scp = DicomSCP(settings, intake_for(settings, converter, store)).start("127.0.0.1", 0)
    yield scp
    scp.stop()


def _send(
    scp: DicomSCP, pki: tuple[Path, Signer], oid: str | None, datasets: list[bytes]
) -> list[int]:
    """C-STORE statuses for ``datasets`` sent over TLS with a client certificate of the
    institution ``oid`` (None: a certificate naming no institution)."""
    folder, signer = pki
    key, cert = certificate(f"PACS {oid}", issuer=signer, ca=False, oid=oid)
    write_pem(folder / "client.crt", folder / "client.key", cert, key)
    context = ssl.create_default_context(cafile=folder / "ca.crt")
    context.load_cert_chain(folder / "client.crt", folder / "client.key")
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(CTImageStorage)
    host, port = scp.address
    assoc = ae.associate(host, port, ae_title="FHIRGATEWAY", tls_args=(context, "localhost"))
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(dcmread(io.BytesIO(d))).Status) for d in datasets]
    finally:
        assoc.release()


def test_tls_c_store_takes_its_own_institutions_study(
    tls_scp: DicomSCP, pki: tuple[Path, Signer]
) -> None:
    assert _send(tls_scp, pki, LAX2_OID, _study()) == [SUCCESS, SUCCESS]
    assert tls_scp.intake.pending() == [STUDY]


def test_tls_c_store_refuses_another_institutions_study(
    tls_scp: DicomSCP, pki: tuple[Path, Signer], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.dicom"):
        statuses = _send(tls_scp, pki, LAX2_OID, _study(**NSCH_IDS))
    assert statuses == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    assert tls_scp.intake.pending() == []
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"study {STUDY}" in line and "institution nsch (NSCH)" in line
    assert "institution lax2 (LAX2)" in line and "王" not in line
    # the certificate of Nansha sends Nansha's study: taken
    assert _send(tls_scp, pki, NSCH_OID, _study(**NSCH_IDS)) == [SUCCESS, SUCCESS]


def test_tls_c_store_from_a_certificate_naming_no_institution_is_refused(
    tls_scp: DicomSCP, pki: tuple[Path, Signer]
) -> None:
    """Signed by the CA, but no institution's (a system's certificate with a common name
    only): nothing to compare the study with, so nothing is taken."""
    assert _send(tls_scp, pki, None, _study()) == [NOT_AUTHORIZED, NOT_AUTHORIZED]
    assert tls_scp.intake.pending() == []


# -- a refusal takes the study's pending instances from the same sender with it -------------


def _members(store: Store, message_id: int) -> list[str]:
    found = store.raw(message_id)
    assert found is not None and found[0] is not None
    return sorted(zipfile.ZipFile(io.BytesIO(found[0])).namelist())


def test_a_refused_stow_takes_the_senders_pending_instances_of_the_study(api: Api) -> None:
    """Lai'an's PACS sent one good instance, then one naming Nansha: the study is
    refused whole, its first instance with it (never converted without the second);
    the instance another sender sent of the same Study UID is untouched."""
    good, bad = part10(wang_wei(STUDY, 1, 1)), part10(wang_wei(STUDY, 1, 2, **NSCH_IDS))
    other = part10(wang_wei(STUDY, 2, 3))
    assert api.post("/dicomweb/studies", multipart([other]), token=OPEN_TOKEN).status_code == 200
    assert api.post("/dicomweb/studies", multipart([good]), token=LAX2_TOKEN).status_code == 200
    response = api.post("/dicomweb/studies", multipart([bad]), token=LAX2_TOKEN)
    assert response.status_code == 403, response.text
    store = api.intake.store
    # only the other sender's instance is pending
    assert [name for name, _ in store.study_instances(STUDY)] == _names([other])
    [kept] = store.find(MessageFilter(state="rejected")).items
    assert _members(store, kept.id) == sorted(_names([good, bad]))
    with pytest.raises(GatewayError):
        process_message(store, api.intake.converter, kept.id)


def _names(datas: list[bytes]) -> list[str]:
    out = []
    for data in datas:
        ds = dcmread(io.BytesIO(data))
        out.append(f"{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm")
    return out


def test_a_refused_c_store_takes_the_senders_pending_instances_of_the_study(
    tls_scp: DicomSCP, pki: tuple[Path, Signer]
) -> None:
    """The same over C-STORE, across associations: Lai'an's certificate sent one good
    instance, then (another association) one naming Nansha; Nansha's certificate sent
    an instance of the same Study UID naming itself, which stays pending."""
    good, bad = part10(wang_wei(STUDY, 1, 1)), part10(wang_wei(STUDY, 1, 2, **NSCH_IDS))
    nansha = part10(wang_wei(STUDY, 2, 3, **NSCH_IDS))
    assert _send(tls_scp, pki, NSCH_OID, [nansha]) == [SUCCESS]
    assert _send(tls_scp, pki, LAX2_OID, [good]) == [SUCCESS]
    assert _send(tls_scp, pki, LAX2_OID, [bad]) == [NOT_AUTHORIZED]
    store = tls_scp.intake.store
    assert [name for name, _ in store.study_instances(STUDY)] == _names([nansha])
    [kept] = store.find(MessageFilter(state="rejected")).items
    assert (kept.control_id, kept.sender) == (STUDY, "LAX2")
    assert _members(store, kept.id) == sorted(_names([good, bad]))


def test_c_store_refuses_the_rest_of_a_study_refused_on_the_association(
    tls_scp: DicomSCP, pki: tuple[Path, Signer]
) -> None:
    """An instance naming Lai'an after one naming Nansha on the same association: the
    study was refused whole, so the rest of it is refused too, not left pending to be
    converted without the refused one."""
    good, bad = part10(wang_wei(STUDY, 1, 1)), part10(wang_wei(STUDY, 1, 2, **NSCH_IDS))
    after = part10(wang_wei(STUDY, 1, 3))
    other = part10(wang_wei("2.16.156.10011.99.1.4.3.20260610.12", 1, 1))
    statuses = _send(tls_scp, pki, LAX2_OID, [good, bad, after, other])
    assert statuses == [SUCCESS, NOT_AUTHORIZED, NOT_AUTHORIZED, SUCCESS]
    assert tls_scp.intake.pending() == ["2.16.156.10011.99.1.4.3.20260610.12"]


@pytest.mark.parametrize("route", ["/convert", "/messages/1/$reprocess"])
def test_a_bound_token_uses_stow_rs_only(api: Api, route: str) -> None:
    """POST /convert of Nansha's study with Lai'an's PACS token would convert it with no
    sender check (and $reprocess converts a stored one again, unchecked): a token that
    stands for an institution's systems sends studies only, by STOW-RS."""
    body = _study(**NSCH_IDS)[0]
    response = api.post(route, body, token=LAX2_TOKEN, **{"Content-Type": "application/dicom"})
    assert response.status_code == 403, response.text
    [issue] = response.json()["issue"]
    assert issue["details"]["coding"][0]["code"] == "security.forbidden"
    assert "lax2" in issue["details"]["text"] and "/dicomweb/" in issue["details"]["text"]
    assert api.intake.store.find(MessageFilter()).items == []
    # the unbound token reaches the route (whatever it answers, not a 403)
    assert api.post(route, body, token=OPEN_TOKEN).status_code != 403


def test_a_study_sent_right_after_its_refusal_is_a_first_message(api: Api) -> None:
    """Lai'an's PACS sent the study naming Nansha (refused), then as it should: its
    commit is the study's first message, not a flagged revision of the refusal (the
    instances' authenticated sender is not the commit's: the conversion learns it)."""
    bad = multipart(_study(**NSCH_IDS))
    assert api.post("/dicomweb/studies", bad, token=LAX2_TOKEN).status_code == 403
    assert api.post("/dicomweb/studies", multipart(_study()), token=LAX2_TOKEN).status_code == 200
    commit = api.post(f"/dicomweb/studies/{STUDY}/$commit", token=LAX2_TOKEN)
    assert commit.json()["converted"] is True, commit.text
    [converted] = api.intake.store.find(MessageFilter(state="converted")).items
    assert (converted.revision, converted.flagged) == (1, False)
