"""Keys, certificates, the demo network CA and the trust store.

Private keys are read from PEM or PKCS#12 files or from environment variables and held
in memory only: never logged, never written anywhere but by ``keys init``, never put in
a database or an error message.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ..config import not_private
from ..datafiles import load_data_file
from ..network import Network
from ._algorithms import DEFAULT_ALG, Algorithm, for_key
from ._errors import SigningError

__all__ = [
    "KEY_USAGE",
    "Signer",
    "TrustStore",
    "issue_certificate",
    "load_certificates",
    "load_private_key",
    "make_crl",
    "make_demo_pki",
    "new_key",
    "thumbprint",
]

UTC = dt.UTC
# digitalSignature and nonRepudiation (contentCommitment): signing what one vouches for
KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_ENV_PREFIX = "GATEWAY_SIGNING_"


def new_key(alg: str = DEFAULT_ALG) -> Any:
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ES384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "PS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    raise SigningError(
        "unsupported-alg", f"no key type for algorithm {alg!r} (ES256, ES384, EdDSA, PS256)"
    )


def _hash_for(key: Any) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # Ed25519 hashes internally
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()  # a P-384 CA signs with ecdsa-with-SHA384 (RFC 5758)
    return hashes.SHA256()


def _name(attrs: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    # UTF8String for every text attribute but C (PrintableString by RFC 5280)
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs if value])


def issue_certificate(
    subject: x509.Name,
    public_key: Any,
    issuer_key: Any,
    issuer: x509.Name | None = None,
    *,
    ca: bool = False,
    days: int = 825,
    not_before: dt.datetime | None = None,
    key_usage: x509.KeyUsage | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    # A day back: partners check signing times against their own clocks, which may lag
    # (and a signature made right after the key must verify at once everywhere).
    start = not_before or dt.datetime.now(UTC) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer or subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), True)
        .add_extension(key_usage or (_CA_USAGE if ca else KEY_USAGE), True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: Any,
    revoked: Sequence[x509.Certificate] = (),
    days: int = 30,
) -> x509.CertificateRevocationList:
    now = dt.datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(minutes=1))
            .build()
        )
    return builder.sign(ca_key, _hash_for(ca_key))


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    # the key's own folder owner-only, as secrets/ is (config.private_folder): others on
    # the host see not even which keys there are; one that exists is left as it is
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make_demo_pki(network_file: Path, out: Path, alg: str = DEFAULT_ALG) -> list[Path]:
    """``gateway keys init``: a demo network CA (``ca/cert.pem``, ``ca/key.pem``,
    ``ca/crl.pem``), a key and certificate per institution (``<key>/``) and per
    practitioner (``<institution>/<practitioner>/``). Returns the folders written."""
    ca_key = new_key(alg)
    ca_name = _name(
        [
            (NameOID.COUNTRY_NAME, "CN"),
            (NameOID.ORGANIZATION_NAME, "FHIR 网关演示网络 FHIR gateway demo network"),
            (NameOID.COMMON_NAME, "演示网络根CA Demo network root CA"),
        ]
    )
    ca_cert = issue_certificate(ca_name, ca_key.public_key(), ca_key, ca=True, days=3650)
    _write_private(out / "ca" / "key.pem", _pem_key(ca_key))
    (out / "ca" / "cert.pem").write_bytes(_pem(ca_cert))
    crl = make_crl(ca_cert, ca_key)
    (out / "ca" / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    written = [out / "ca"]
    network = Network.load(network_file)
    raw = load_data_file(network_file)
    practitioners = raw.get("practitioners") or []
    for entry in raw["institutions"]:
        inst = network.institution(str(entry["key"]))
        assert inst is not None  # Network.load read the same entries
        country = "HK" if (inst.jurisdiction or "").startswith("HK") else "CN"
        # in the institution's own script: Traditional for Hong Kong (docs/partners.md)
        own = ("zh-Hant", "zh-Hans") if country == "HK" else ("zh-Hans", "zh-Hant")
        zh = inst.name(*own) or inst.key
        en = inst.name("en") or inst.key
        attrs = [
            (NameOID.COUNTRY_NAME, country),
            (NameOID.ORGANIZATION_NAME, zh[:64]),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, en[:64]),
            (NameOID.COMMON_NAME, zh[:64]),
        ]
        if inst.oid:
            attrs.append((NameOID.ORGANIZATION_IDENTIFIER, f"OID:{inst.oid}"))
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(inst.base)]
        if inst.oid:
            san.append(x509.UniformResourceIdentifier(f"urn:oid:{inst.oid}"))
        written.append(_issue_into(out / inst.key, attrs, san, ca_key, ca_cert, alg))
        for person in practitioners:
            if person.get("institution") != inst.key:
                continue
            names = person.get("name") or {}
            local = (names.get("zh-Hans") or names.get("zh-Hant") or {}).get("text", "")
            latin = (names.get("en") or {}).get("text", "")
            p_attrs = [
                *attrs[:3],
                (NameOID.COMMON_NAME, f"{local} {latin}".strip()[:64]),
                (NameOID.SERIAL_NUMBER, str(person.get("id", ""))),
                (NameOID.TITLE, str(person.get("role", "")).split(" (")[0][:64]),
            ]
            if inst.oid:
                p_attrs.append((NameOID.ORGANIZATION_IDENTIFIER, f"OID:{inst.oid}"))
            p_san: list[x509.GeneralName] = [
                x509.UniformResourceIdentifier(f"{inst.base}/sid/staff#{person.get('id', '')}")
            ]
            folder = out / inst.key / str(person["key"])
            written.append(_issue_into(folder, p_attrs, p_san, ca_key, ca_cert, alg))
    return written


def _issue_into(
    folder: Path,
    attrs: list[tuple[x509.ObjectIdentifier, str]],
    san: list[x509.GeneralName],
    ca_key: Any,
    ca_cert: x509.Certificate,
    alg: str,
) -> Path:
    key = new_key(alg)
    cert = issue_certificate(_name(attrs), key.public_key(), ca_key, ca_cert.subject, san=san)
    _write_private(folder / "key.pem", _pem_key(key))
    (folder / "cert.pem").write_bytes(_pem(cert) + _pem(ca_cert))  # leaf, then its chain
    return folder


def load_private_key(data: bytes, password: bytes | None = None, source: str = "key") -> Any:
    """A private key from PEM, DER or PKCS#12 bytes (the key alone)."""
    key, _ = _load_key_and_certs(data, password, source)
    return key


def _load_key_and_certs(
    data: bytes, password: bytes | None, source: str
) -> tuple[Any, list[x509.Certificate]]:
    if b"-----BEGIN" in data:
        try:
            return serialization.load_pem_private_key(data, password), []
        except (ValueError, TypeError) as exc:
            raise SigningError(
                "key", f"{source}: not a usable PEM private key ({_why(exc)})"
            ) from None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, password)
    except (ValueError, TypeError):
        try:
            return serialization.load_der_private_key(data, password), []
        except (ValueError, TypeError) as exc:
            raise SigningError(
                "key", f"{source}: neither PKCS#12 nor a DER/PEM private key ({_why(exc)})"
            ) from None
    if key is None:
        raise SigningError("key", f"{source}: the PKCS#12 file holds no private key")
    return key, [c for c in (cert, *extra) if c is not None]


def _why(exc: Exception) -> str:
    # the library's reason, never the key bytes (its messages hold none)
    text = str(exc).split("\n")[0]
    return text if "password" in text.lower() or len(text) < 120 else type(exc).__name__


def load_certificates(data: bytes, source: str = "certificate") -> list[x509.Certificate]:
    """Certificates from PEM (any number, leaf first) or one DER certificate."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise SigningError("cert", f"{source}: not a PEM or DER X.509 certificate") from None


def thumbprint(cert: x509.Certificate) -> str:
    """base64url SHA-256 of the DER certificate: the JWS ``kid`` and ``x5t#S256``."""
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
    return urlsafe_b64encode(digest).rstrip(b"=").decode()


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    found = name.get_attributes_for_oid(oid)
    value = found[0].value if found else None
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Signer:
    """A private key with its certificate chain, ready to sign; what the header and
    ``Signature.who`` say of the signer is computed once here."""

    key: Any = field(repr=False)
    chain: tuple[x509.Certificate, ...]
    algorithm: Algorithm
    kid: str
    x5c: tuple[str, ...]
    name: str
    institution: str
    who: dict[str, Any]
    role_title: str | None = None

    @classmethod
    def from_key(cls, key: Any, chain: list[x509.Certificate]) -> Signer:
        if not chain:
            raise SigningError("cert", "no certificate for the signing key")
        algorithm = for_key(key)
        if algorithm is None:
            raise SigningError(
                "unsupported-alg",
                f"a {type(key).__name__} key fits no signing algorithm (ES256: P-256, "
                "ES384: P-384, EdDSA: Ed25519, PS256: RSA ≥ 2048 bits)",
            )
        leaf = chain[0]
        if leaf.public_key() != key.public_key():
            raise SigningError("cert", "the certificate is not the signing key's certificate")
        x5c = tuple(b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain)
        name, institution, who = describe(leaf)
        return cls(
            key,
            tuple(chain),
            algorithm,
            thumbprint(leaf),
            x5c,
            name,
            institution,
            who,
            _attr(leaf.subject, NameOID.TITLE),
        )

    @classmethod
    def load(
        cls,
        key_file: Path,
        cert_file: Path | None = None,
        chain_files: Sequence[Path] = (),
        password: bytes | None = None,
    ) -> Signer:
        try:
            mode = key_file.stat().st_mode
            key_data = key_file.read_bytes()
            certs_data = [
                p.read_bytes() for p in ([cert_file] if cert_file else []) + list(chain_files)
            ]
        except OSError as exc:
            raise SigningError("key", f"cannot read {exc.filename}: {exc.strerror}") from None
        # As the pseudonym key: a signing key others on the host can read is refused, not
        # used (anyone who read it could sign as the institution or radiologist)
        problem = not_private(key_file, mode, "private key file")
        if problem is not None:
            raise SigningError("key", problem)
        key, certs = _load_key_and_certs(key_data, password, str(key_file))
        for path, data in zip([cert_file, *chain_files], certs_data, strict=False):
            certs += load_certificates(data, str(path))
        return cls.from_key(key, certs)

    @classmethod
    def from_env(cls, name: str, env: dict[str, str] | None = None) -> Signer | None:
        """``GATEWAY_SIGNING_KEY_<NAME>`` (PEM) and ``GATEWAY_SIGNING_CERT_<NAME>`` (PEM
        chain, leaf first), optional ``GATEWAY_SIGNING_PASSWORD_<NAME>``."""
        source: Mapping[str, str] = os.environ if env is None else env
        suffix = name.upper().replace("-", "_")
        key_pem = source.get(f"{_ENV_PREFIX}KEY_{suffix}")
        if not key_pem:
            return None
        cert_pem = source.get(f"{_ENV_PREFIX}CERT_{suffix}", "")
        password = source.get(f"{_ENV_PREFIX}PASSWORD_{suffix}")
        key, certs = _load_key_and_certs(
            key_pem.encode(), password.encode() if password else None, f"${_ENV_PREFIX}KEY_{suffix}"
        )
        if cert_pem:
            certs += load_certificates(cert_pem.encode(), f"${_ENV_PREFIX}CERT_{suffix}")
        return cls.from_key(key, certs)


def describe(cert: x509.Certificate) -> tuple[str, str, dict[str, Any]]:
    """(signer name, institution name, FHIR Reference to the signer) from a certificate:
    a practitioner certificate (serialNumber = staff number) names a PractitionerRole,
    an institution certificate an Organization (by its OID)."""
    subject = cert.subject
    cn = _attr(subject, NameOID.COMMON_NAME) or subject.rfc4514_string()
    org = " / ".join(
        v
        for v in (
            _attr(subject, NameOID.ORGANIZATION_NAME),
            _attr(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        )
        if v
    )
    staff = _attr(subject, NameOID.SERIAL_NUMBER)
    oid = (_attr(subject, NameOID.ORGANIZATION_IDENTIFIER) or "").removeprefix("OID:")
    uris: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        pass
    if staff:
        staff_uri = next((u for u in uris if u.endswith(f"#{staff}")), None)
        system = staff_uri.rsplit("#", 1)[0] if staff_uri else "urn:fhir-gateway:staff"
        who = {
            "type": "PractitionerRole",
            "identifier": {"system": system, "value": staff},
            "display": cn,
        }
    else:
        who = {
            "type": "Organization",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"}
            if oid
            else {"system": "urn:ietf:rfc:3986", "value": uris[0] if uris else cn},
            "display": cn,
        }
    return cn, org or cn, who


@dataclass
class TrustStore:
    """CA certificates and CRLs from a folder (``*.pem``, ``*.crt``, ``*.cer``, ``*.crl``;
    sub-folders too: one per partner). ``keys init``'s ``DIR/ca`` is one."""

    roots: list[x509.Certificate] = field(default_factory=list)
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)
    source: str = ""

    @classmethod
    def load(cls, folder: Path) -> TrustStore:
        if not folder.is_dir():
            raise SigningError("trust-store", f"trust store {folder} is not a folder")
        store = cls(source=str(folder))
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name == "key.pem":
                continue
            data = path.read_bytes()
            if b"PRIVATE KEY" in data:
                continue  # a demo CA folder holds its key: never read it here
            if path.suffix == ".crl" or b"BEGIN X509 CRL" in data:
                try:
                    store.crls.append(
                        x509.load_pem_x509_crl(data)
                        if b"-----BEGIN" in data
                        else x509.load_der_x509_crl(data)
                    )
                except ValueError:
                    raise SigningError("trust-store", f"{path}: not a CRL") from None
            elif path.suffix in (".pem", ".crt", ".cer"):
                for cert in load_certificates(data, str(path)):
                    if _is_ca(cert):
                        store.roots.append(cert)
        if not store.roots:
            raise SigningError("trust-store", f"trust store {folder} holds no CA certificate")
        return store


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False
