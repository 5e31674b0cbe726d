"""Which institution a certificate names (``certificate_institution``: the inbound
endpoint's SMART and mTLS partners, the MLLP listener's TLS clients) is read exactly:
the organizationIdentifier ``OID:<oid>`` as ``gateway keys init`` writes it, the OID as
the network file writes it; a person's certificate names none."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

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
