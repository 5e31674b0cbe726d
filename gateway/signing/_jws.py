"""Detached JWS (RFC 7515 appendix F) with the JAdES baseline-B header (ETSI TS 119 182-1)
as IHE DSG's JSON option uses it: ``alg``, ``kid``, ``x5c``, ``sigT``, ``srCms`` and
``crit`` naming the headers the verifier must understand.

The payload is detached and unencoded (RFC 7797 ``"b64": false``, listed in ``crit``, as
JAdES allows for detached signatures): the signing input is ``BASE64URL(header) || '.' ||
canonical bytes``. Not base64-encoding a Bundle of tens of kilobytes is what keeps the
JOSE layer within 1.2x of the bare signature (bench/RESULTS.md). Signatures made by
others with ``b64`` absent or true (the payload base64url-encoded) verify too."""

from __future__ import annotations

import binascii
import datetime as dt
from base64 import urlsafe_b64decode, urlsafe_b64encode
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from cryptography import x509

from ._algorithms import ALGORITHMS
from ._errors import SigningError
from ._pki import Signer, load_certificates, thumbprint

__all__ = [
    "COMMITMENTS",
    "SIGNATURE_TYPE_SYSTEM",
    "Header",
    "commitment",
    "format_time",
    "sign_detached",
    "verify_detached",
]

SIGNATURE_TYPE_SYSTEM = "urn:iso-astm:E1762-95:2013"
# http://hl7.org/fhir/ValueSet/signature-type (ASTM E1762-95): role → (OID, display)
COMMITMENTS: dict[str, tuple[str, str]] = {
    "author": ("1.2.840.10065.1.12.1.1", "Author's Signature"),
    "coauthor": ("1.2.840.10065.1.12.1.2", "Coauthor's Signature"),
    "co-participant": ("1.2.840.10065.1.12.1.3", "Co-participant's Signature"),
    "transcriptionist": ("1.2.840.10065.1.12.1.4", "Transcriptionist/Recorder Signature"),
    "verification": ("1.2.840.10065.1.12.1.5", "Verification Signature"),
    "validation": ("1.2.840.10065.1.12.1.6", "Validation Signature"),
    "consent": ("1.2.840.10065.1.12.1.7", "Consent Signature"),
    "signature-witness": ("1.2.840.10065.1.12.1.8", "Signature Witness Signature"),
    "event-witness": ("1.2.840.10065.1.12.1.9", "Event Witness Signature"),
    "identity-witness": ("1.2.840.10065.1.12.1.10", "Identity Witness Signature"),
    "consent-witness": ("1.2.840.10065.1.12.1.11", "Consent Witness Signature"),
    "interpreter": ("1.2.840.10065.1.12.1.12", "Interpreter Signature"),
    "review": ("1.2.840.10065.1.12.1.13", "Review Signature"),
    "source": ("1.2.840.10065.1.12.1.14", "Source Signature"),
    "addendum": ("1.2.840.10065.1.12.1.15", "Addendum Signature"),
    "modification": ("1.2.840.10065.1.12.1.16", "Modification Signature"),
    "administrative": ("1.2.840.10065.1.12.1.17", "Administrative (Error/Edit) Signature"),
    "timestamp": ("1.2.840.10065.1.12.1.18", "Timestamp Signature"),
}
_BY_OID = {oid: role for role, (oid, _) in COMMITMENTS.items()}
# The JAdES headers this verifier processes; any other name in "crit" is refused (RFC
# 7515 4.1.11).
UNDERSTOOD_CRIT = frozenset({"b64", "sigT", "srCms"})
# RFC 9864's fully-specified name for what JAdES and IHE DSG still call EdDSA
_ALIASES = {"Ed25519": "EdDSA"}


def commitment(role: str) -> tuple[str, str]:
    found = COMMITMENTS.get(role)
    if found is None:
        raise SigningError(
            "bad-role", f"unknown signature role {role!r} (one of {', '.join(COMMITMENTS)})"
        )
    return found


def format_time(when: dt.datetime) -> str:
    """An instant in UTC to the second: 2026-06-10T07:20:00Z (sigT, Signature.when)."""
    w = when.astimezone(dt.UTC)
    return f"{w.year:04d}-{w.month:02d}-{w.day:02d}T{w.hour:02d}:{w.minute:02d}:{w.second:02d}Z"


def _b64(data: bytes) -> bytes:
    return urlsafe_b64encode(data).rstrip(b"=")


def _unb64(text: str) -> bytes:
    return urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_detached(payload: bytes, signer: Signer, role: str, when: dt.datetime) -> str:
    """The compact detached JWS ``header..signature`` over ``payload`` (the canonical
    bytes, unencoded: RFC 7797)."""
    protected = _protected(signer.algorithm.name, signer.kid, signer.x5c, role, when)
    signature = signer.algorithm.sign(signer.key, b"".join((protected, b".", payload)))
    return (protected + b".." + _b64(signature)).decode("ascii")


def _protected(alg: str, kid: str, x5c: tuple[str, ...], role: str, when: dt.datetime) -> bytes:
    """BASE64URL of the protected header. The part that is the same for every signature
    of a signer (alg, kid, x5c with its kilobytes of certificates, b64, crit) is encoded
    once: JSON whitespace pads it to a multiple of 3 bytes, so its base64 joins the
    base64 of the rest (sigT, srCms) without re-encoding."""
    return _constant_part(alg, kid, x5c) + _variable_part(role, when)


def _variable_part(role: str, when: dt.datetime) -> bytes:
    """BASE64URL of sigT and srCms. Signing times are to the second, so the records of a
    batch signed within one second share it: the last one is kept."""
    global _last_variable
    key, encoded = _last_variable
    if key == (role, when):
        return encoded
    if role not in _ROLE_TAILS:
        commitment(role)  # raises signing.bad-role
    encoded = _b64(_ROLE_TAILS[role] % format_time(when).encode())
    _last_variable = ((role, when), encoded)
    return encoded


@lru_cache(maxsize=64)
def _constant_part(alg: str, kid: str, x5c: tuple[str, ...]) -> bytes:
    head = (
        orjson.dumps(
            {"alg": alg, "kid": kid, "x5c": x5c, "b64": False, "crit": ["b64", "sigT", "srCms"]}
        )[:-1]
        + b","
    )
    head += b" " * (-len(head) % 3)
    return _b64(head)


def _role_tail(role: str) -> bytes:
    oid, desc = COMMITMENTS[role]
    srcms = orjson.dumps([{"commId": {"id": f"urn:oid:{oid}", "desc": desc}}])
    return b'"sigT":"%s","srCms":' + srcms.replace(b"%", b"%%") + b"}"


_ROLE_TAILS = {role: _role_tail(role) for role in COMMITMENTS}
_last_variable: tuple[tuple[str, dt.datetime] | None, bytes] = (None, b"")


@dataclass(frozen=True)
class Header:
    """What a verified protected header says."""

    alg: str
    kid: str
    chain: tuple[x509.Certificate, ...]
    signing_time: dt.datetime
    role: str | None  # the commitment's role name (None: not a FHIR signature type)
    commitment_oid: str | None
    raw: dict[str, Any]


def parse_header(jws: str) -> tuple[Header, str, bytes]:
    """The checked protected header, its encoded form and the signature bytes. Refuses
    what is malformed, ``alg: none``, HMAC, unknown ``crit`` and ``kid``/``x5c`` that
    disagree, each with its own code."""
    parts = jws.split(".")
    if len(parts) != 3:
        raise SigningError("malformed", f"not a compact JWS ({len(parts)} parts, 3 expected)")
    protected, payload, signature = parts
    if payload:
        raise SigningError("malformed", "the JWS carries its payload; a detached JWS is expected")
    try:
        raw = orjson.loads(_unb64(protected))
        sig = _unb64(signature)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise SigningError(
            "malformed", "the JWS header or signature is not base64url JSON"
        ) from None
    if _b64(sig).decode() != signature or _b64(_unb64(protected)).decode() != protected:
        # one spelling only (RFC 7515 2: no padding, no line breaks; unused bits zero):
        # another would be a changed byte that still verifies
        raise SigningError("malformed", "the JWS header or signature is not canonical base64url")
    if not isinstance(raw, dict):
        raise SigningError("malformed", "the JWS protected header is not a JSON object")
    alg = raw.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise SigningError("alg-none", f"alg {alg!r}: unsigned JWS (alg none) refused")
    if alg.upper().startswith("HS"):
        raise SigningError(
            "alg-confusion",
            f"alg {alg}: an HMAC algorithm with a certificate's public key as its secret "
            "(algorithm confusion) refused",
        )
    alg = _ALIASES.get(alg, alg)
    if alg not in ALGORITHMS:
        raise SigningError(
            "unsupported-alg",
            f"alg {alg!r} is not one the gateway verifies ({', '.join(ALGORITHMS)})",
        )
    crit = raw.get("crit", [])
    if not isinstance(crit, list) or not crit or not all(isinstance(c, str) for c in crit):
        raise SigningError("unknown-crit", "crit must be a non-empty list of header names")
    unknown = [c for c in crit if c not in UNDERSTOOD_CRIT or c not in raw]
    if unknown:
        raise SigningError(
            "unknown-crit",
            f"crit names headers this verifier does not process or that are absent: {unknown}",
        )
    if "b64" in raw and (not isinstance(raw["b64"], bool) or "b64" not in crit):
        raise SigningError("malformed", "b64 must be a boolean listed in crit (RFC 7797 6)")
    chain = _chain(raw.get("x5c"))
    kid = raw.get("kid")
    if kid != thumbprint(chain[0]) or raw.get("x5t#S256", kid) != kid:
        raise SigningError(
            "kid-mismatch",
            f"kid {str(kid)[:16]!r}… is not the SHA-256 thumbprint of the x5c certificate "
            f"({thumbprint(chain[0])[:16]}…)",
        )
    if not ALGORITHMS[alg].fits(chain[0].public_key()):
        raise SigningError(
            "alg-confusion",
            f"alg {alg} does not fit the certificate's {type(chain[0].public_key()).__name__}",
        )
    signing_time = _time(raw.get("sigT"))
    oid = _commitment_oid(raw.get("srCms"))
    header = Header(alg, kid, chain, signing_time, _BY_OID.get(oid or ""), oid, raw)
    return header, protected, sig


def verify_detached(jws: str, payload: bytes) -> Header:
    """The header of a JWS whose signature over ``payload`` holds; SigningError
    ``content-changed`` when it does not."""
    header, protected, signature = parse_header(jws)
    encoded = payload if header.raw.get("b64", True) is False else _b64(payload)
    signing_input = b"".join((protected.encode("ascii"), b".", encoded))
    if not ALGORITHMS[header.alg].verify(header.chain[0].public_key(), signature, signing_input):
        raise SigningError(
            "content-changed",
            "the signature does not match the content: it changed after signing "
            "(or the signature is damaged)",
        )
    return header


def _chain(x5c: Any) -> tuple[x509.Certificate, ...]:
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise SigningError("malformed", "x5c (the signer's certificate chain) is missing")
    certs = []
    for n, item in enumerate(x5c):
        try:
            der = binascii.a2b_base64(item)
        except binascii.Error:
            raise SigningError("malformed", f"x5c[{n}] is not base64") from None
        certs += load_certificates(der, f"x5c[{n}]")
    return tuple(certs)


def _time(value: Any) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SigningError("malformed", f"sigT {value!r} is not a UTC date-time") from None
    if when.tzinfo is None:
        raise SigningError("malformed", "sigT has no time zone")
    return when


def _commitment_oid(value: Any) -> str | None:
    try:
        ident = value[0]["commId"]["id"]
    except (TypeError, KeyError, IndexError):
        return None
    return str(ident).removeprefix("urn:oid:")
