"""Which institution a certificate names (``certificate_institution``: the inbound
endpoint's SMART and mTLS partners, the MLLP listener's TLS clients) is read exactly:
the organizationIdentifier ``OID:<oid>`` as ``gateway keys init`` writes it, the OID as
the network file writes it; a person's certificate names none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.errors import ConfigError
from gateway.network import Network, certificate_institution
from gateway.signing import make_demo_pki
from tests._certs import certificate

REPO = Path(__file__).resolve().parents[1]
NSCH_OID = "2.16.156.10011.99.1.1"


@pytest.fixture(scope="module")
def network() -> Network:
    return Network.load(REPO / "seeds" / "network.yaml")


def _certificate(attrs: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Certificate:
    return certificate(attrs)[1]


def test_certificate_institution_reads_the_keys_init_certificates(
    tmp_path: Path, network: Network
) -> None:
    pki = tmp_path / "pki"
    make_demo_pki(REPO / "seeds" / "network.yaml", pki)
    for key in ("nsch", "hkpmc", "lax2"):
        cert = x509.load_pem_x509_certificates((pki / key / "cert.pem").read_bytes())[0]
        found = certificate_institution(cert, network)
        assert found is not None and found.key == key
    # a practitioner's certificate carries its institution's OID too: a person, not it
    person = x509.load_pem_x509_certificates((pki / "njmu2" / "liu-mei" / "cert.pem").read_bytes())
    assert certificate_institution(person[0], network) is None


@pytest.mark.parametrize(
    "value",
    [
        f"OID:{NSCH_OID.replace('2', '２', 1)}",  # a full-width digit: folded, it is nsch's
        f"oid:{NSCH_OID}",
        f"OID:urn:oid:{NSCH_OID}",
        f"OID: {NSCH_OID}",
        f"OID:{NSCH_OID}.1",
        "NSCH",
        "nsch",
    ],
)
def test_certificate_institution_is_exact(network: Network, value: str) -> None:
    name = (NameOID.COMMON_NAME, "广州市第一人民医院南沙医院")
    cert = _certificate([name, (NameOID.ORGANIZATION_IDENTIFIER, value)])
    assert certificate_institution(cert, network) is None
    exact = _certificate([(NameOID.ORGANIZATION_IDENTIFIER, f"OID:{NSCH_OID}")])
    found = certificate_institution(exact, network)
    assert found is not None and found.key == "nsch"


@pytest.mark.parametrize(
    "written",
    [
        f"urn:oid:{NSCH_OID}",  # as FHIR writes an OID
        f"URN:OID:{NSCH_OID}",
        NSCH_OID.translate(str.maketrans("0123456789.", "０１２３４５６７８９．")),  # full width
        f" {NSCH_OID}\u3000",
    ],
)
def test_an_oid_written_another_way_in_the_network_file_still_names_the_institution(
    tmp_path: Path, written: str
) -> None:
    # the certificate check compares the OID exactly: written 'urn:oid:…' or in full-width
    # digits in the network file, the institution's own certificates named no institution
    # (and it was written out as urn:oid:urn:oid:…). The file's OIDs are normalised on load.
    path = _network_with_oid(tmp_path, written)
    network = Network.load(path)
    nsch = network.institution("nsch")
    assert nsch is not None and nsch.oid == NSCH_OID
    cert = _certificate([(NameOID.ORGANIZATION_IDENTIFIER, f"OID:{NSCH_OID}")])
    assert certificate_institution(cert, network) is nsch


@pytest.mark.parametrize(
    "written",
    [
        "OID:2.16.156.1",
        "2.16.156.广州",
        "2.16..156",
        "urn:oid:x",
        "2.16.156.10011.99.1.1.",  # a trailing dot
        "2.16.0156.10011.99.1.1",  # a leading zero: FHIR's oid refuses it
        "7.16.156",  # no first arc above 2
        "2",  # one arc
    ],
)
def test_a_network_oid_that_is_no_oid_refuses_the_file(tmp_path: Path, written: str) -> None:
    path = _network_with_oid(tmp_path, written)
    with pytest.raises(ConfigError) as caught:
        Network.load(path)
    message = caught.value.issue.message
    assert caught.value.code == "config.network"
    assert str(path) in message and "(nsch)" in message and "'oid'" in message


def test_a_network_oid_yaml_reads_as_a_number_refuses_the_file(tmp_path: Path) -> None:
    path = tmp_path / "network.yaml"
    text = (REPO / "seeds" / "network.yaml").read_text(encoding="utf-8")
    path.write_text(text.replace(f"oid: {NSCH_OID}", "oid: 1.20", 1), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        Network.load(path)
    assert "quote it" in caught.value.issue.message and "(nsch)" in caught.value.issue.message


def _network_with_oid(tmp_path: Path, oid: str) -> Path:
    raw = yaml.safe_load((REPO / "seeds" / "network.yaml").read_text(encoding="utf-8"))
    [nsch] = [i for i in raw["institutions"] if i["key"] == "nsch"]
    nsch["oid"] = oid
    path = tmp_path / "network.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return path
