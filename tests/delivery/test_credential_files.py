"""A partner's credential files replaced while the worker runs (token rotation): the
worker notices (gateway.datafiles.FileWatch over gateway.partners.credential_files)
and makes the partner's pooled client again, so the next request carries the new
credential, as after a partners.yaml change. The mTLS certificate and key:
tests/partners/test_mtls.py."""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import respx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.delivery import Deliverer, Outbox
from gateway.partners import Auth, Partner

from .conftest import BASE, CONFIG, POST_URL, bundle, response


def _replace(path: Path, text: str) -> None:
    """Rotate ``path``: the new content written beside it and renamed over it, its time
    kept (``cp -p``, ``rsync -t``), the same length: only the file itself is new."""
    old = path.stat()
    new = path.with_suffix(".new")
    new.write_text(text, encoding="utf-8")
    new.chmod(0o600)  # a secret: owner-only, or it is refused
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (old.st_mtime_ns, old.st_size)


def test_a_bearer_token_file_replaced_is_used_from_the_next_request(
    outbox: Outbox, partner_api: respx.MockRouter, tmp_path: Path
) -> None:
    token_file = tmp_path / "hkpmc.token"
    token_file.write_text("token-2026-aaaa\n", encoding="utf-8")
    token_file.chmod(0o600)  # a secret: owner-only, or it is refused
    hkpmc = Partner("hkpmc", BASE, auth=Auth("bearer", token_file=token_file))
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    with Deliverer(outbox, {"hkpmc": hkpmc}, CONFIG, rng=random.Random(3)) as deliverer:
        deliverer.reload_interval = 0  # look before every batch
        first = outbox.enqueue(hkpmc, bundle("P1", "O1"))[0]
        deliverer.run_once()
        before = deliverer._clients["hkpmc"]
        _replace(token_file, "token-2026-bbbb\n")
        second = outbox.enqueue(hkpmc, bundle("P2", "O2"))[0]
        deliverer.run_once()
        assert before.is_closed and deliverer._clients["hkpmc"] is not before
    assert outbox.require(first).state == outbox.require(second).state == "delivered"
    sent = [c.request.headers["Authorization"] for c in post.calls]
    assert sent == ["Bearer token-2026-aaaa", "Bearer token-2026-bbbb"]


def _key_pair(name: str) -> tuple[bytes, bytes]:
    """A self-signed client certificate and its key (PEM), as a renewal brings."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = datetime.now(UTC) - timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def test_a_certificate_replaced_before_its_key_holds_the_row_back_unsent(
    outbox: Outbox, partner_api: respx.MockRouter, tmp_path: Path
) -> None:
    """A renewal half done (the certificate replaced, its key not yet): the client
    cannot be made. The row is not begun (still pending, never moved to sending, so
    never taken for an ambiguous send the partner must be asked about); once the key
    follows, the next batch sends it with the new pair."""
    hkpmc, cert, key = _mtls_partner(tmp_path, "old")
    new_cert, new_key = _key_pair("new")
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    with Deliverer(outbox, {"hkpmc": hkpmc}, CONFIG, rng=random.Random(3)) as deliverer:
        deliverer.reload_interval = 0  # look before every batch
        first = outbox.enqueue(hkpmc, bundle("P1", "O1"))[0]
        deliverer.run_once()
        assert outbox.require(first).state == "delivered"
        (tmp_path / "client.new").write_bytes(new_cert)
        os.replace(tmp_path / "client.new", cert)  # the key not yet
        second = outbox.enqueue(hkpmc, bundle("P2", "O2"))[0]
        deliverer.run_once()
        row = outbox.require(second)
        assert row.state == "pending" and row.attempts == 0
        assert [e.to_state for e in outbox.events(second)] == ["pending"]
        (tmp_path / "client-key.new").write_bytes(new_key)
        (tmp_path / "client-key.new").chmod(0o600)
        os.replace(tmp_path / "client-key.new", key)
        deliverer.run_once()
    assert outbox.require(second).state == "delivered"
    assert len(post.calls) == 2


def test_a_client_key_made_readable_after_start_stops_the_partners_requests(
    outbox: Outbox, partner_api: respx.MockRouter, tmp_path: Path
) -> None:
    """The mTLS key checked private when the client is made (as at start): a chmod after
    start changes neither its time nor its size, yet the worker sees it (the file's mode
    is part of its stamp), makes the client again and is refused: the row is not begun.
    Private again, the next batch sends it."""
    hkpmc, _, key = _mtls_partner(tmp_path, "now")
    post = partner_api.post(POST_URL).respond(200, json=response("201", "201"))
    with Deliverer(outbox, {"hkpmc": hkpmc}, CONFIG, rng=random.Random(3)) as deliverer:
        deliverer.reload_interval = 0  # look before every batch
        first = outbox.enqueue(hkpmc, bundle("P1", "O1"))[0]
        deliverer.run_once()
        assert outbox.require(first).state == "delivered"
        key.chmod(0o644)  # before: the pooled client went on using it
        second = outbox.enqueue(hkpmc, bundle("P2", "O2"))[0]
        deliverer.run_once()
        row = outbox.require(second)
        assert row.state == "pending" and row.attempts == 0
        key.chmod(0o600)
        deliverer.run_once()
    assert outbox.require(second).state == "delivered"
    assert len(post.calls) == 2


def _mtls_partner(tmp_path: Path, name: str) -> tuple[Partner, Path, Path]:
    """hkpmc over mTLS with a fresh key pair in ``tmp_path`` (the key 0600: a secret,
    owner-only, or it is refused); the partner, its certificate and key files."""
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    pem_cert, pem_key = _key_pair(name)
    cert.write_bytes(pem_cert)
    key.write_bytes(pem_key)
    key.chmod(0o600)
    auth = Auth("mtls", cert_file=cert, key_file=key)
    return Partner("hkpmc", BASE, auth=auth, check_overwrite=False), cert, key
