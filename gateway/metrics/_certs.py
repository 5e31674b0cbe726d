"""Certificate expiry as a gauge: the not-after time of every certificate the gateway
signs with (each key folder of ``signing_keys``, keys given in the environment) and
of the CA certificates it trusts (``signing_trust``). Read at each scrape, so a
certificate renewed on disk shows its new date without a restart."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Settings

__all__ = ["CertificateCollector", "certificates"]

log = logging.getLogger("gateway.metrics")
_ENV_CERT = "GATEWAY_SIGNING_CERT_"  # as Signer.from_env reads them
Found = tuple[str, str, str, x509.Certificate]  # source, key, position, certificate


def _pem_or_der(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _positions(certs: list[x509.Certificate]) -> Iterator[tuple[str, x509.Certificate]]:
    for n, cert in enumerate(certs):
        yield ("leaf" if n == 0 else f"chain-{n}"), cert


def _key_folder(folder: Path) -> list[x509.Certificate]:
    """The chain of a key folder as the signer loads it: cert.pem, else the PKCS#12
    file (readable without a password, or with GATEWAY_SIGNING_PASSWORD)."""
    if (folder / "cert.pem").is_file():
        return _pem_or_der((folder / "cert.pem").read_bytes())
    for name in ("key.p12", "key.pfx"):
        if (folder / name).is_file():
            password = os.environ.get("GATEWAY_SIGNING_PASSWORD")
            _, cert, extra = pkcs12.load_key_and_certificates(
                (folder / name).read_bytes(), password.encode() if password else None
            )
            return [c for c in (cert, *extra) if c is not None]
    return []


def certificates(settings: Settings, env: Mapping[str, str] | None = None) -> Iterator[Found]:
    """Every certificate to watch. A file that cannot be read is logged (its path, not
    its content) and skipped: the others are still reported."""
    env = os.environ if env is None else env
    keys = settings.signing_keys
    if keys is not None and keys.is_dir():
        for folder in sorted(p for p in keys.iterdir() if p.is_dir()):
            try:
                chain = _key_folder(folder)
            except (OSError, ValueError, TypeError) as exc:
                log.warning(
                    "metrics: cannot read the certificate of key %s: %s",
                    folder.name,
                    type(exc).__name__,
                )
                continue
            for position, cert in _positions(chain):
                yield "signing", folder.name, position, cert
    for name in sorted(k for k in env if k.startswith(_ENV_CERT)):
        try:
            chain = _pem_or_der(env[name].encode())
        except ValueError:
            log.warning("metrics: %s holds no readable certificate", name)
            continue
        key = "env:" + name[len(_ENV_CERT) :].lower().replace("_", "-")
        for position, cert in _positions(chain):
            yield "signing", key, position, cert
    trust = settings.signing_trust
    if trust is not None and trust.is_dir():
        for path in sorted(trust.rglob("*")):
            if not path.is_file() or path.suffix not in (".pem", ".crt", ".cer"):
                continue
            try:
                data = path.read_bytes()
                if b"PRIVATE KEY" in data:
                    continue  # a demo CA folder keeps its key beside its certificate
                found = _pem_or_der(data)
            except (OSError, ValueError) as exc:
                log.warning(
                    "metrics: cannot read trusted certificate %s: %s", path, type(exc).__name__
                )
                continue
            for n, cert in enumerate(found):
                yield "trust", str(path.relative_to(trust)), f"cert-{n}", cert


class CertificateCollector(Collector):
    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "gateway_certificate_not_after_timestamp_seconds",
            "When a certificate stops being valid (Unix time): the signing keys' "
            "certificates and chains (source=signing) and the trusted CAs (source=trust).",
            labels=["source", "key", "position"],
        )
        try:
            for source, key, position, cert in certificates(self._settings()):
                family.add_metric([source, key, position], cert.not_valid_after_utc.timestamp())
        except Exception as exc:  # a scrape never fails on a certificate
            log.warning("metrics: reading certificates failed: %s", type(exc).__name__)
        yield family
