"""Signing and verification (docs/signing.md): detached JWS over RFC 8785 canonical
JSON (JAdES baseline-B header) on Bundles, with a ``Provenance`` per signature and
co-signing; PAdES signatures on report PDFs; verification with a trust store of CA
certificates and CRLs; the auditor's report.

    signer = Signer.load(Path("key.pem"), Path("cert.pem"))
    signed = sign_record_bundle(bundle_json, signer, role="author")   # the outbound stage
    report = verify_bundle(orjson.loads(signed), TrustStore.load(Path("trust/")))
"""

from ._algorithms import ALGORITHMS, DEFAULT_ALG, Algorithm
from ._bundle import PROFILE, sign_bundle, sign_record_bundle, signature_entries, signed_content
from ._cli import (
    add_cli,
    folder_signer,
    load_signer,
    signer_for,
    signing_password,
    trust_store,
    verify_bytes,
)
from ._errors import SigningError
from ._ijson import JsonPath, duplicate_member
from ._jcs import canonicalize, es6_number
from ._jws import COMMITMENTS, sign_detached, verify_detached
from ._pki import Signer, TrustStore, issue_certificate, make_crl, make_demo_pki, new_key
from ._verify import Check, FileReport, SignatureReport, check_certificate, verify_bundle

__all__ = [
    "ALGORITHMS",
    "COMMITMENTS",
    "DEFAULT_ALG",
    "PROFILE",
    "Algorithm",
    "Check",
    "FileReport",
    "JsonPath",
    "SignatureReport",
    "Signer",
    "SigningError",
    "TrustStore",
    "add_cli",
    "canonicalize",
    "check_certificate",
    "duplicate_member",
    "es6_number",
    "folder_signer",
    "issue_certificate",
    "load_signer",
    "make_crl",
    "make_demo_pki",
    "new_key",
    "sign_bundle",
    "sign_detached",
    "sign_record_bundle",
    "signature_entries",
    "signed_content",
    "signer_for",
    "signing_password",
    "trust_store",
    "verify_bundle",
    "verify_bytes",
    "verify_detached",
]
