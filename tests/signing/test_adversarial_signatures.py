"""Adversarial review of signed Bundles and their verification (what test_tamper.py,
test_refusals.py, test_es384.py and test_jcs.py leave): a signature moved to another
Bundle, RFC 8785 edge cases inside a signed Bundle (numbers, U+2028, astral characters
and their surrogate pairs, NFC against NFD), JSON that two parsers read differently
(duplicate keys), a certificate issued through another partner's end-entity
certificate, and a certificate expired by now with a signing time claimed before."""

from __future__ import annotations

import copy
import datetime as dt
import json
import unicodedata
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.signing import (
    Signer,
    TrustStore,
    issue_certificate,
    make_crl,
    new_key,
    sign_bundle,
    verify_bundle,
)
from gateway.signing._cli import verify_bytes

from .conftest import WHEN


def _failed(report: Any) -> list[tuple[str, str | None]]:
    assert not report.ok
    return [(c.name, c.code) for c in report.failures()]


def _small(text: str, value: Any) -> dict[str, Any]:
    """A transaction Bundle with one Patient carrying ``text`` and ``value``."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:7d3c0b7e-adv"},
        "entry": [
            {
                "fullUrl": "urn:uuid:0f0c9a43-0000-4000-8000-000000000001",
                "resource": {
                    "resourceType": "Patient",
                    "name": [{"text": text}],
                    "extension": [{"url": "https://example.org/x", "valueDecimal": value}],
                },
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }


def test_a_signature_moved_to_another_bundle_is_refused(
    golden: dict[str, Any], lax2: Signer, trust: TrustStore
) -> None:
    one = sign_bundle(golden, lax2, "author", WHEN)
    other_content = copy.deepcopy(golden)
    other_content["entry"][0]["resource"]["id"] = "another-record"
    other = sign_bundle(other_content, lax2, "author", WHEN)
    assert verify_bundle(one, trust).ok and verify_bundle(other, trust).ok
    swapped = copy.deepcopy(other)
    swapped["entry"][-1] = one["entry"][-1]
    swapped["signature"] = one["signature"]
    assert ("content", "signing.content-changed") in _failed(verify_bundle(swapped, trust))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("王伟 WANG Wei", 1e21),
        ("陳大文 CHAN Tai Man", -0.0),
        ("李娜\u2028LI Na", 0.1 + 0.2),
        ("𠮷野家 (U+20BB7, a surrogate pair in UTF-16)", 5e-324),
        ("許 (Big5 B3 5C)", 1.7976931348623157e308),
    ],
)
def test_rfc8785_edge_cases_survive_any_serialisation(
    lax2: Signer, trust: TrustStore, text: str, value: float
) -> None:
    """Signed, then written as another tool would (ASCII escapes, surrogate pairs
    escaped, numbers as Python writes them, indented): still valid. One digit of the
    number or one character of the text changed: refused."""
    signed = sign_bundle(_small(text, value), lax2, "author", WHEN)
    for data in (
        orjson.dumps(signed),
        json.dumps(signed, ensure_ascii=True, indent=1).encode(),
        json.dumps(signed, ensure_ascii=False, separators=(",", ":")).encode(),
    ):
        report = verify_bytes(data, "x.json", trust)
        assert report.ok, report.failures()
    changed = copy.deepcopy(signed)
    extension = changed["entry"][0]["resource"]["extension"][0]
    extension["valueDecimal"] = 0.3 if value == 0.1 + 0.2 else 1.0
    assert ("content", "signing.content-changed") in _failed(verify_bundle(changed, trust))


def test_nfd_is_not_nfc(lax2: Signer, trust: TrustStore) -> None:
    """RFC 8785 does not normalise: a Bundle whose pinyin (or a CJK compatibility
    ideograph, which NFC maps to another code point) was normalised on the way no longer
    verifies, and the gateway never normalises what it verifies."""
    text = "王伟 Wáng Wěi, 金 U+F90A"
    text = text.replace("U+F90A", "\uf90a")
    signed = sign_bundle(_small(text, 1), lax2, "author", WHEN)
    assert verify_bundle(orjson.loads(orjson.dumps(signed)), trust).ok
    for form in ("NFD", "NFC"):
        normalised = orjson.loads(unicodedata.normalize(form, orjson.dumps(signed).decode()))
        assert normalised != signed
        assert ("content", "signing.content-changed") in _failed(verify_bundle(normalised, trust))


def test_duplicate_keys_are_refused(lax2: Signer, trust: TrustStore) -> None:
    """A signed Bundle with a second `text` key put before the signed one: the gateway's
    parser keeps the last (the signed value), a first-wins parser the forged one. Two
    readings of one file cannot both be what was signed: refused."""
    signed = orjson.dumps(sign_bundle(_small("王伟 WANG Wei", 1), lax2, "author", WHEN))
    forged = signed.replace(b'"text":"', b'"text":"\xe6\x9d\x8e\xe5\xa8\x9c","text":"', 1)
    assert orjson.loads(forged) == orjson.loads(signed)  # the same value for orjson
    report = verify_bytes(forged, "forged.json", trust)
    assert not report.ok and report.problem is not None
    assert report.problem.code == "signing.bad-input"
    assert "duplicate key" in report.problem.message and "李娜" not in report.problem.message


def test_duplicate_keys_spaced_before_their_colon_are_refused(
    lax2: Signer, trust: TrustStore
) -> None:
    """JSON allows blanks between a name and its colon: the duplicate check ran only on
    text holding two `":` (a shortcut), so `"text" :` twice passed it."""
    signed = orjson.dumps(sign_bundle(_small("王伟 WANG Wei", 1), lax2, "author", WHEN))
    spaced = signed.replace(b'":', b'" :')
    forged = spaced.replace(b'"text" :"', b'"text" :"\xe6\x9d\x8e\xe5\xa8\x9c","text" :"', 1)
    assert b'":' not in forged and orjson.loads(forged) == orjson.loads(signed)
    report = verify_bytes(forged, "forged.json", trust)
    assert not report.ok and report.problem is not None
    assert report.problem.code == "signing.bad-input" and "duplicate key" in report.problem.message


def _demo(pki: Path, who: str) -> tuple[Any, x509.Certificate]:
    key = serialization.load_pem_private_key((pki / who / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((pki / who / "cert.pem").read_bytes())
    return key, cert


def test_a_certificate_issued_by_a_partners_signing_certificate_does_not_chain(
    pki: Path, golden: dict[str, Any], trust: TrustStore
) -> None:
    """HKPMC's signing certificate (an end entity: cA false) issues one naming the
    Lai'an hospital. Only the missing CRL of 'HKPMC as a CA' stopped it, and the chain
    check said 'trusted root'."""
    partner_key, partner = _demo(pki, "hkpmc")
    _, lax2 = _demo(pki, "lax2")
    key = new_key()
    forged = issue_certificate(lax2.subject, key.public_key(), partner_key, partner.subject)
    ca = x509.load_pem_x509_certificate((pki / "ca" / "cert.pem").read_bytes())
    report = verify_bundle(sign_bundle(golden, Signer.from_key(key, [forged, partner, ca])), trust)
    assert ("chain", "signing.untrusted") in _failed(report)


def test_a_certificate_expired_now_with_an_earlier_signing_time_is_refused(
    golden: dict[str, Any], tmp_path: Path
) -> None:
    """sigT is the signer's claim: a key whose certificate expired (and which a CA
    may drop from its CRL once expired, RFC 5280 3.3) signs today with sigT set back
    inside the validity. Used to be valid and trusted."""
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "老CA Old CA")])
    ca = issue_certificate(ca_name, ca_key.public_key(), ca_key, ca=True, not_before=past)
    (tmp_path / "cert.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    crl = make_crl(ca, ca_key, [])
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    trust = TrustStore.load(tmp_path)
    key = new_key()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "已过期 Expired signer")])
    cert = issue_certificate(name, key.public_key(), ca_key, ca.subject, not_before=past, days=30)
    signer = Signer.from_key(key, [cert, ca])
    in_time = sign_bundle(golden, signer, when=past + dt.timedelta(days=10))
    report = verify_bundle(in_time, trust)
    failures = report.failures()
    assert [(c.name, c.code) for c in failures] == [("validity", "signing.expired")]
    assert "expired" in failures[0].message and "signer's claim" in failures[0].message
    # the same, verified at a time within the validity (as on receipt): valid
    assert verify_bundle(in_time, trust, now=past + dt.timedelta(days=10, minutes=1)).ok


def _ca_cert(
    name: x509.Name, key: Any, issuer: x509.Name, issuer_key: Any, **extensions: Any
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=extensions.get("depth")), True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    )
    if "permitted" in extensions:
        builder = builder.add_extension(
            x509.NameConstraints([x509.DirectoryName(extensions["permitted"])], None), True
        )
    from cryptography.hazmat.primitives import hashes

    return builder.sign(issuer_key, hashes.SHA256())


def _network(tmp_path: Path) -> tuple[Any, x509.Certificate, TrustStore]:
    """A network root and Hong Kong partner B's intermediate CA, constrained to B's own
    names; the trust store holds the root and both CRLs (nothing revoked)."""
    root_key, b_key = new_key(), new_key()
    root_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "网络根CA Network root")])
    b_names = x509.Name(
        [
            x509.NameAttribute(x509.NameOID.COUNTRY_NAME, "HK"),
            x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "香港伙伴乙 Partner B"),
        ]
    )
    b_ca_name = x509.Name([*b_names, x509.NameAttribute(x509.NameOID.COMMON_NAME, "B CA")])
    root = _ca_cert(root_name, root_key, root_name, root_key, depth=1)
    b_ca = _ca_cert(b_ca_name, b_key, root_name, root_key, depth=0, permitted=b_names)
    (tmp_path / "root.pem").write_bytes(root.public_bytes(serialization.Encoding.PEM))
    for ca, key, name in ((root, root_key, "root"), (b_ca, b_key, "b")):
        crl = make_crl(ca, key, [])
        (tmp_path / f"{name}.crl").write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return b_key, b_ca, TrustStore.load(tmp_path)


def test_a_partners_ca_cannot_sign_in_another_institutions_name(
    pki: Path, golden: dict[str, Any], tmp_path: Path
) -> None:
    """Partner B's CA, constrained (RFC 5280 name constraints) to B's names, issues a
    certificate with the Lai'an hospital's subject: the constraint used to be ignored
    and the signature was 'valid and trusted' as Lai'an's."""
    b_key, b_ca, trust = _network(tmp_path)
    _, lax2 = _demo(pki, "lax2")
    key = new_key()
    forged = issue_certificate(lax2.subject, key.public_key(), b_key, b_ca.subject)
    signed = sign_bundle(golden, Signer.from_key(key, [forged, b_ca]), "author", WHEN)
    report = verify_bundle(signed, trust)
    check = next(c for c in report.failures())
    assert (check.name, check.code) == ("chain", "signing.untrusted")
    assert "outside the name constraints of its CA" in check.message
    # B's own practitioner, within the constraints, verifies
    b_names = [*b_ca.subject][:2]
    own = x509.Name([*b_names, x509.NameAttribute(x509.NameOID.COMMON_NAME, "Dr B")])
    cert = issue_certificate(own, key.public_key(), b_key, b_ca.subject)
    good = sign_bundle(golden, Signer.from_key(key, [cert, b_ca]), "author", WHEN)
    assert verify_bundle(good, trust).ok, verify_bundle(good, trust).failures()


_URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _twin(text: str, alphabet: str) -> str:
    """``text`` with its last base64 character's unused low bit flipped: another
    spelling of the same bytes."""
    body = text.rstrip("=")
    pad = text[len(body) :]
    return body[:-1] + alphabet[alphabet.index(body[-1]) ^ 1] + pad


def test_another_base64_spelling_of_the_signature_is_refused(
    lax2: Signer, trust: TrustStore
) -> None:
    """The last character of the JWS signature (ES256: 64 bytes, 4 unused bits) or of
    Signature.data (base64 of the JWS) could be changed without changing the bytes:
    a changed byte in a signed Bundle that still verified."""
    import base64

    signed = sign_bundle(_small("王伟", 1), lax2, "author", WHEN)
    data = signed["signature"]["data"]
    jws = base64.b64decode(data).decode()
    assert len(jws.rsplit(".", 1)[1]) % 4 != 0  # unused bits exist

    twin_jws = jws[: jws.rindex(".") + 1] + _twin(jws.rsplit(".", 1)[1], _URL)
    outer = base64.b64encode(twin_jws.encode()).decode()
    twin_data = _twin(data, _STD) if data.endswith("=") else None
    for new in filter(None, (outer, twin_data)):
        assert new != data
        changed = copy.deepcopy(signed)
        changed["signature"]["data"] = new
        changed["entry"][-1]["resource"]["signature"][0]["data"] = new
        report = verify_bundle(changed, trust)
        assert not report.ok
        assert report.failures()[0].code == "signing.malformed"


def test_a_provenance_agent_other_than_the_signer_is_refused(
    golden: dict[str, Any], lax2: Signer, trust: TrustStore
) -> None:
    """The Lai'an hospital signs, with its Provenance's agent naming the Nanjing expert:
    a FHIR reader takes Provenance.agent for who signed. The signature is the signer's
    own, so only the metadata check can see it."""
    import base64

    from gateway.signing import signed_content
    from gateway.signing._jws import sign_detached

    signed = sign_bundle(golden, lax2, "author", WHEN)
    provenance = signed["entry"][-1]["resource"]
    provenance["agent"][0]["who"] = {"reference": "PractitionerRole/xu-jing", "display": "徐静"}
    signed.pop("signature")
    jws = sign_detached(signed_content(signed, 1), lax2, "author", WHEN.replace(microsecond=0))
    data = base64.b64encode(jws.encode()).decode()
    provenance["signature"][0]["data"] = data
    signed["signature"] = dict(provenance["signature"][0])
    report = verify_bundle(signed, trust)
    check = report.failures()[0]
    assert (check.name, check.code) == ("metadata", "signing.mismatch")
    assert "Provenance.agent" in check.message and "徐静" not in check.message
