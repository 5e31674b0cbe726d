"""Mutual TLS against a real local TLS server (the ssl module) that requires a client
certificate from the demo network CA: the partner client presents the gateway's own
institution certificate, and a client without one is refused."""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.errors import ConfigError
from gateway.network import Network
from gateway.partners import (
    Auth,
    Partner,
    exposed_credentials,
    names_institution,
    partner_client,
)
from gateway.store import Store
from tests._certs import certificate, write_pem
from tests.partners.conftest import NETWORK


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[bytes]] = []  # DER client certificates, one per request

    def do_GET(self) -> None:
        assert isinstance(self.connection, ssl.SSLSocket)
        peer = self.connection.getpeercert(binary_form=True)
        assert peer is not None  # CERT_REQUIRED: the handshake already insisted
        type(self).seen.append(peer)
        body = json.dumps({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *_: object) -> None:  # quiet
        pass


def _server_context(pki: Path, folder: Path) -> ssl.SSLContext:
    """A server certificate for 127.0.0.1 from the demo CA; client certificates required
    and checked against the same CA."""
    ca_cert = x509.load_pem_x509_certificate((pki / "ca" / "cert.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca" / "key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    key, cert = certificate("partner.test", issuer=(ca_cert.subject, ca_key), san=san)
    write_pem(folder / "server.pem", folder / "server-key.pem", cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server-key.pem")
    context.load_verify_locations(pki / "ca" / "cert.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def tls_partner(pki: Path, tmp_path: Path) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.socket = _server_context(pki, tmp_path).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen.clear()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_mtls_presents_the_institution_certificate(tls_partner: str, pki: Path) -> None:
    auth = Auth("mtls", key="lax2", signing_keys=pki)  # the gateway's own key folder
    partner = Partner("hkpmc", tls_partner, auth=auth, ca_file=pki / "ca" / "cert.pem")
    with partner_client(partner, DeliveryConfig()) as client:
        answer = client.get("metadata")
        assert answer.status_code == 200 and "Authorization" not in answer.request.headers
        client.get("metadata")
    lax2 = Network.load(NETWORK).institution("lax2")
    assert lax2 is not None
    assert len(_Handler.seen) == 2
    assert names_institution(x509.load_der_x509_certificate(_Handler.seen[0]), lax2)


def test_mtls_with_named_files(tls_partner: str, pki: Path) -> None:
    auth = Auth("mtls", cert_file=pki / "njmu2" / "cert.pem", key_file=pki / "njmu2" / "key.pem")
    partner = Partner("hkpmc", tls_partner, auth=auth, ca_file=pki / "ca" / "cert.pem")
    with partner_client(partner, DeliveryConfig()) as client:
        assert client.get("metadata").status_code == 200
    njmu2 = Network.load(NETWORK).institution("njmu2")
    assert njmu2 is not None
    assert names_institution(x509.load_der_x509_certificate(_Handler.seen[0]), njmu2)


def test_without_a_client_certificate_the_partner_refuses(tls_partner: str, pki: Path) -> None:
    partner = Partner("hkpmc", tls_partner, ca_file=pki / "ca" / "cert.pem")
    with partner_client(partner, DeliveryConfig()) as client, pytest.raises(httpx.TransportError):
        client.get("metadata")
    assert _Handler.seen == []


def test_unusable_mtls_files_are_a_clear_error(pki: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    auth = Auth("mtls", cert_file=missing, key_file=pki / "lax2" / "key.pem")
    with pytest.raises(ConfigError) as caught:
        partner_client(Partner("hkpmc", "https://h/fhir", auth=auth), DeliveryConfig())
    assert caught.value.code == "config.partner-auth"
    assert str(missing) in caught.value.issue.message
    wrong_pair = Auth(
        "mtls", cert_file=pki / "lax2" / "cert.pem", key_file=pki / "njmu2" / "key.pem"
    )
    with pytest.raises(ConfigError, match="cannot be used"):
        partner_client(Partner("hkpmc", "https://h/fhir", auth=wrong_pair), DeliveryConfig())


def test_a_client_key_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    """The mTLS client key was loaded from a 0644 file (anyone on the host could present
    the gateway's certificate); refused, as the signing keys are."""
    key = tmp_path / "client-key.pem"
    key.write_bytes((pki / "lax2" / "key.pem").read_bytes())
    key.chmod(0o640)
    auth = Auth("mtls", cert_file=pki / "lax2" / "cert.pem", key_file=key)
    partner = Partner("hkpmc", "https://h/fhir", auth=auth)
    with pytest.raises(ConfigError) as caught:
        partner_client(partner, DeliveryConfig())
    assert caught.value.code == "config.partner-auth"
    private = f"{key}: the mTLS client key file must be private (chmod 600)"
    assert caught.value.issue.message == f"partner hkpmc: {private}"
    assert exposed_credentials(partner) == [private]
    key.chmod(0o600)
    assert exposed_credentials(partner) == []
    partner_client(partner, DeliveryConfig()).close()


def test_a_client_certificate_replaced_is_presented_from_the_next_batch(
    tls_partner: str, pki: Path, tmp_path: Path
) -> None:
    """The delivery worker's pooled client for an mTLS partner presents the certificate
    its files hold when the client is made; the files replaced (a renewal, written
    beside and renamed over), the worker makes the client again before its next batch,
    which presents the new one."""
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    cert.write_bytes((pki / "lax2" / "cert.pem").read_bytes())
    key.write_bytes((pki / "lax2" / "key.pem").read_bytes())
    key.chmod(0o600)  # a secret: owner-only, or it is refused
    auth = Auth("mtls", cert_file=cert, key_file=key)
    partner = Partner("hkpmc", tls_partner, auth=auth, ca_file=pki / "ca" / "cert.pem")
    network = Network.load(NETWORK)
    lax2, njmu2 = network.institution("lax2"), network.institution("njmu2")
    assert lax2 is not None and njmu2 is not None
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        with Deliverer(Outbox(store), {"hkpmc": partner}, DeliveryConfig()) as deliverer:
            deliverer.reload_interval = 0  # look before every batch
            assert deliverer.client(partner).get("metadata").status_code == 200
            for name, source in (("client.new", "cert.pem"), ("client-key.new", "key.pem")):
                (tmp_path / name).write_bytes((pki / "njmu2" / source).read_bytes())
                (tmp_path / name).chmod(0o600)
            os.replace(tmp_path / "client.new", cert)
            os.replace(tmp_path / "client-key.new", key)
            deliverer.run_once()  # nothing due: the batch's look at the files
            assert deliverer.client(partner).get("metadata").status_code == 200
    finally:
        store.close()
    first, second = (x509.load_der_x509_certificate(der) for der in _Handler.seen)
    assert names_institution(first, lax2) and names_institution(second, njmu2)
