"""Certificate expiry as a gauge: the not-after time of every certificate the gateway
signs with (each key folder of ``signing_keys``, keys given in the environment) and
of the CA certificates it trusts (``signing_trust``). Read at each scrape, so a
certificate renewed on disk shows its new date without a restart. One that cannot be
read is a ``gateway_certificate_unreadable`` series (and a log line) instead, with the
code the signer would refuse it with: a PKCS#12 file others may read is not opened
(``config.not_private``, as the signer refuses it)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..config import Settings, exposed
from ..errors import Issue

__all__ = ["CertificateCollector", "certificates"]

log = logging.getLogger("gateway.metrics")
_ENV_CERT = "GATEWAY_SIGNING_CERT_"  # as Signer.from_env reads them
Found = tuple[str, str, str, x509.Certificate]  # source, key, position, certificate
Unreadable = tuple[str, str, str]  # source, key, error code (signing.key, signing.cert)
# The code the signer refuses a private key file with (signing.Signer.load), said here
# as it says it; metrics builds on the pipeline, which signing's reports build on, so it
# cannot import SigningError itself.
_KEY_REFUSED = "signing.key"


class _Refused(Exception):
    """A key folder the watch does not read, and why (as the signer would refuse it)."""

    def __init__(self, issue: Issue) -> None:
        super().__init__(issue.line())
        self.issue = issue


def _pem_or_der(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _positions(certs: list[x509.Certificate]) -> Iterator[tuple[str, x509.Certificate]]:
    for n, cert in enumerate(certs):
        yield ("leaf" if n == 0 else f"chain-{n}"), cert


def _key_folder(folder: Path) -> list[x509.Certificate]:
    """The chain of a key folder as the signer loads it (signing's ``load_signer``):
    the PKCS#12 file first (readable without a password, or with
    GATEWAY_SIGNING_PASSWORD), else cert.pem. A folder holding both signs with the
    PKCS#12 file's certificate, so that is the expiry to watch."""
    for name in ("key.p12", "key.pfx"):
        if (folder / name).is_file():
            # The file holds the private key too: one group or others may read is not
            # opened here either (the signer refuses it with these words and code)
            if problem := exposed(folder / name, "private key file"):
                raise _Refused(Issue(_KEY_REFUSED, problem))
            password = os.environ.get("GATEWAY_SIGNING_PASSWORD")
            try:
                _, cert, extra = pkcs12.load_key_and_certificates(
                    (folder / name).read_bytes(), password.encode() if password else None
                )
            except (ValueError, TypeError):  # the password, or not PKCS#12: the key's fault
                raise _Refused(Issue(_KEY_REFUSED, _unopened(folder / name))) from None
            return [c for c in (cert, *extra) if c is not None]
    if (folder / "cert.pem").is_file():
        return _pem_or_der((folder / "cert.pem").read_bytes())
    return []


def _unopened(path: Path) -> str:
    # the signer's words for it end with the library's reason; the watch names the
    # file and the setting to look at, never a password or key bytes
    return (
        f"{path}: the PKCS#12 file does not open (not PKCS#12, or not with the password "
        "in GATEWAY_SIGNING_PASSWORD)"
    )


def _env_key(name: str) -> str:
    return "env:" + name[len(_ENV_CERT) :].lower().replace("_", "-")


def certificates(
    settings: Settings,
    env: Mapping[str, str] | None = None,
    unreadable: list[Unreadable] | None = None,
) -> Iterator[Found]:
    """Every certificate to watch. A file that cannot be read is logged (its path and
    why, never its content) and skipped, added to ``unreadable`` when given: the others
    are still reported."""
    env = os.environ if env is None else env
    skipped: list[Unreadable] = [] if unreadable is None else unreadable
    keys = settings.signing_keys
    if keys is not None and keys.is_dir():
        for folder in sorted(p for p in keys.iterdir() if p.is_dir()):
            try:
                chain = _key_folder(folder)
            except _Refused as exc:  # its message names the file, never its content
                log.warning("metrics: not watching key %s: %s", folder.name, exc)
                skipped.append(("signing", folder.name, exc.issue.code))
                continue
            except (OSError, ValueError, TypeError) as exc:
                log.warning(
                    "metrics: cannot read the certificate of key %s: %s",
                    folder.name,
                    type(exc).__name__,
                )
                skipped.append(("signing", folder.name, "signing.cert"))
                continue
            for position, cert in _positions(chain):
                yield "signing", folder.name, position, cert
    for name in sorted(k for k in env if k.startswith(_ENV_CERT)):
        try:
            chain = _pem_or_der(env[name].encode())
        except ValueError:
            log.warning("metrics: %s holds no readable certificate", name)
            skipped.append(("signing", _env_key(name), "signing.cert"))
            continue
        key = _env_key(name)
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
                skipped.append(("trust", str(path.relative_to(trust)), "signing.cert"))
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
        unreadable = GaugeMetricFamily(
            "gateway_certificate_unreadable",
            "1 for each key folder, key in the environment or trusted certificate file "
            "whose certificate the watch could not read, with the code the signer would "
            "refuse it with (signing.key: e.g. a PKCS#12 file others may read).",
            labels=["source", "key", "code"],
        )
        skipped: list[Unreadable] = []
        try:
            for source, key, position, cert in certificates(self._settings(), None, skipped):
                family.add_metric([source, key, position], cert.not_valid_after_utc.timestamp())
        except Exception as exc:  # a scrape never fails on a certificate
            log.warning("metrics: reading certificates failed: %s", type(exc).__name__)
        for source, key, code in skipped:
            unreadable.add_metric([source, key, code], 1.0)
        yield family
        yield unreadable
