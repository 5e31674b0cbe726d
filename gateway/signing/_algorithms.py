"""JWS algorithms, pluggable: one small class per algorithm, registered by name.

Adding one (SM2 with SM3, which the mainland side may require: GM/T 0003 and 0004, the
JOSE name is not yet registered; e.g. ``"SM2"`` with a ``gmssl``-based key) is a class
with ``name``, ``fits(key)``, ``sign`` and ``verify`` added to ``ALGORITHMS``; the JWS,
Bundle, trust and CLI code look algorithms up by name and by key type only (``for_key``).
Certificates carrying SM2 keys also need an X.509 parser that knows the SM2 curve (the
``cryptography`` package does not); that would plug into ``_pki.load_certificates``.
"""

from __future__ import annotations

from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

__all__ = ["ALGORITHMS", "DEFAULT_ALG", "Algorithm", "for_key"]

DEFAULT_ALG = "ES256"


class Algorithm(Protocol):
    name: str  # the JWS "alg"

    def fits(self, key: Any) -> bool:
        """Whether a private or public key is of this algorithm's type."""
        ...

    def sign(self, key: Any, data: bytes) -> bytes: ...

    def verify(self, key: Any, signature: bytes, data: bytes) -> bool: ...


class _ECDSA:
    """ECDSA on one curve with one hash; JWS signatures are r||s, each the curve's size in
    big-endian bytes (RFC 7518 3.4): not the DER that ``cryptography`` reads and writes."""

    name: str
    _curve: type[ec.EllipticCurve]
    _size: int  # bytes of r (and of s)
    _scheme: ec.ECDSA

    def fits(self, key: Any) -> bool:
        ok = isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey))
        return ok and isinstance(key.curve, self._curve)

    def sign(self, key: Any, data: bytes) -> bytes:
        r, s = decode_dss_signature(key.sign(data, self._scheme))
        return r.to_bytes(self._size, "big") + s.to_bytes(self._size, "big")

    def verify(self, key: Any, signature: bytes, data: bytes) -> bool:
        # a length of another curve's signature is refused here, never re-split
        if len(signature) != 2 * self._size:
            return False
        half = self._size
        der = encode_dss_signature(
            int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
        )
        try:
            key.verify(der, data, self._scheme)
        except InvalidSignature:
            return False
        return True


class ES256(_ECDSA):
    """ECDSA P-256 with SHA-256; r||s, 32 bytes each (RFC 7518 3.4)."""

    name = "ES256"
    _curve = ec.SECP256R1
    _size = 32
    _scheme = ec.ECDSA(hashes.SHA256())


class ES384(_ECDSA):
    """ECDSA P-384 with SHA-384; r||s, 48 bytes each (RFC 7518 3.4). Hospitals' and HK
    partners' PKIs often issue P-384 certificates."""

    name = "ES384"
    _curve = ec.SECP384R1
    _size = 48
    _scheme = ec.ECDSA(hashes.SHA384())


class EdDSA:
    """Ed25519 (RFC 8037)."""

    name = "EdDSA"

    def fits(self, key: Any) -> bool:
        return isinstance(key, (ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey))

    def sign(self, key: Any, data: bytes) -> bytes:
        return key.sign(data)  # type: ignore[no-any-return]

    def verify(self, key: Any, signature: bytes, data: bytes) -> bool:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True


class PS256:
    """RSASSA-PSS with SHA-256, MGF1 SHA-256, salt of 32 bytes (RFC 7518 3.5)."""

    name = "PS256"
    _pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)

    def fits(self, key: Any) -> bool:
        return isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)) and key.key_size >= 2048

    def sign(self, key: Any, data: bytes) -> bytes:
        return key.sign(data, self._pad, hashes.SHA256())  # type: ignore[no-any-return]

    def verify(self, key: Any, signature: bytes, data: bytes) -> bool:
        try:
            key.verify(signature, data, self._pad, hashes.SHA256())
        except InvalidSignature:
            return False
        return True


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (ES256(), ES384(), EdDSA(), PS256())}


def for_key(key: Any) -> Algorithm | None:
    """The algorithm a key signs with (None: no registered algorithm fits it)."""
    return next((a for a in ALGORITHMS.values() if a.fits(key)), None)
