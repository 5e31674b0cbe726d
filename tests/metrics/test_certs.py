"""The certificate-expiry watch and secret files: a key folder's PKCS#12 file (the
private key with the certificate) that group or others may read is not opened by the
watch, as the signer refuses it; the scrape reports it instead, with the signer's code
and words, and no secret in the metric or the log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import Settings
from gateway.metrics._certs import CertificateCollector
from gateway.signing import Signer, SigningError, load_signer
from tests._certs import self_signed

PASSWORD = "p12-s3cret-word"
NOT_AFTER = dt.datetime(2031, 5, 17, 8, 0, tzinfo=dt.UTC)


def _p12(path: Path, mode: int, not_after: dt.datetime = NOT_AFTER) -> x509.Certificate:
    """A key folder's key.p12 (password-protected) with a self-signed certificate."""
    key, cert = self_signed("watch test", not_after)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"watch", key, cert, None, serialization.BestAvailableEncryption(PASSWORD.encode())
        )
    )
    path.chmod(mode)
    return cert


def _scrape(settings: Settings) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry()
    registry.register(CertificateCollector(lambda: settings))
    text = generate_latest(registry).decode()
    assert PASSWORD not in text
    return {
        family.name: [(dict(s.labels), s.value) for s in family.samples]
        for family in text_string_to_metric_families(text)
    }


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("GATEWAY_SIGNING_PASSWORD", PASSWORD)
    return dataclasses.replace(
        Settings.load(home=tmp_path / "home", env={}), signing_keys=tmp_path / "keys"
    )


@pytest.mark.parametrize("name", ["key.p12", "key.pfx"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644], ids=oct)
def test_a_pkcs12_key_others_may_read_is_not_read_but_reported(
    settings: Settings, caplog: pytest.LogCaptureFixture, name: str, mode: int
) -> None:
    assert settings.signing_keys is not None
    path = settings.signing_keys / "nsch" / name
    _p12(path, mode)
    with pytest.raises(SigningError) as refused:  # what the signer says of the same file
        Signer.load(path, password=PASSWORD.encode())
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        families = _scrape(settings)
    assert families["gateway_certificate_not_after_timestamp_seconds"] == []  # not read
    assert families["gateway_certificate_unreadable"] == [
        ({"source": "signing", "key": "nsch", "code": "signing.key"}, 1.0)
    ]
    [line] = [r.getMessage() for r in caplog.records if "nsch" in r.getMessage()]
    assert refused.value.code == "signing.key"
    assert str(refused.value) in line  # the signer's words and code
    assert f"{path}: the private key file must be private (chmod 600)" in line
    assert PASSWORD not in caplog.text


def test_a_private_pkcs12_key_is_watched(settings: Settings) -> None:
    assert settings.signing_keys is not None
    cert = _p12(settings.signing_keys / "nsch" / "key.p12", 0o600)
    families = _scrape(settings)
    assert families["gateway_certificate_not_after_timestamp_seconds"] == [
        (
            {"source": "signing", "key": "nsch", "position": "leaf"},
            cert.not_valid_after_utc.timestamp(),
        )
    ]
    assert families["gateway_certificate_unreadable"] == []


def test_one_exposed_key_leaves_the_others_watched(settings: Settings) -> None:
    assert settings.signing_keys is not None
    _p12(settings.signing_keys / "lax2" / "key.p12", 0o644)
    cert = _p12(settings.signing_keys / "nsch" / "key.p12", 0o600)
    families = _scrape(settings)
    watched = families["gateway_certificate_not_after_timestamp_seconds"]
    assert [labels["key"] for labels, _ in watched] == ["nsch"]
    assert watched[0][1] == cert.not_valid_after_utc.timestamp()
    assert [labels["key"] for labels, _ in families["gateway_certificate_unreadable"]] == ["lax2"]


def test_a_folder_with_both_is_watched_by_the_certificate_it_signs_with(
    settings: Settings, tmp_path: Path
) -> None:
    """key.p12 beside a key.pem/cert.pem pair: the signer signs with the PKCS#12 file,
    so its certificate's expiry is the one shown, not the stale cert.pem's."""
    assert settings.signing_keys is not None
    folder = settings.signing_keys / "nsch"
    signing = _p12(folder / "key.p12", 0o600)
    stale = _p12(tmp_path / "stale.p12", 0o600, NOT_AFTER - dt.timedelta(days=200))
    (folder / "cert.pem").write_bytes(stale.public_bytes(serialization.Encoding.PEM))
    signer = load_signer(settings, "nsch")  # what `gateway sign --key nsch` signs with
    assert signer.chain[0] == signing
    families = _scrape(settings)
    [(labels, value)] = families["gateway_certificate_not_after_timestamp_seconds"]
    assert labels == {"source": "signing", "key": "nsch", "position": "leaf"}
    assert value == signing.not_valid_after_utc.timestamp()


def test_a_pkcs12_key_that_does_not_open_is_reported_as_the_signer_would(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong GATEWAY_SIGNING_PASSWORD: the signer refuses the key (signing.key), so
    the watch says signing.key too (it said signing.cert, a certificate problem)."""
    assert settings.signing_keys is not None
    path = settings.signing_keys / "nsch" / "key.p12"
    _p12(path, 0o600)
    monkeypatch.setenv("GATEWAY_SIGNING_PASSWORD", "not-the-password")
    with pytest.raises(SigningError) as refused:
        load_signer(settings, "nsch")
    with caplog.at_level(logging.WARNING, logger="gateway.metrics"):
        families = _scrape(settings)
    assert refused.value.code == "signing.key"
    assert families["gateway_certificate_unreadable"] == [
        ({"source": "signing", "key": "nsch", "code": "signing.key"}, 1.0)
    ]
    assert "GATEWAY_SIGNING_PASSWORD" in caplog.text and "not-the-password" not in caplog.text
