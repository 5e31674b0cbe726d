"""``gateway keys init``, ``gateway sign`` (Bundle, PDF, PKCS#12) and ``gateway verify``
(exit codes, --json, --report)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import load_pem_x509_certificates
from cryptography.x509.oid import NameOID

from gateway.cli import main

from .conftest import GOLDEN_COBRANDED
from .test_pdf import REPORT


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("keys")
    assert main(["keys", "init", "--out", str(out)]) == 0
    return out


def test_keys_init_makes_the_network(keys: Path) -> None:
    assert (keys / "ca" / "cert.pem").is_file() and (keys / "ca" / "crl.pem").is_file()
    assert (keys / "lax2" / "key.pem").stat().st_mode & 0o077 == 0  # private
    for folder in (keys / "ca", keys / "lax2", keys / "njmu2" / "xu-jing"):
        assert folder.stat().st_mode & 0o077 == 0, folder  # its folder owner-only too
    cert = load_pem_x509_certificates((keys / "njmu2" / "xu-jing" / "cert.pem").read_bytes())[0]
    subject = {a.oid: a.value for a in cert.subject}
    assert subject[NameOID.COMMON_NAME] == "徐静 XU Jing"
    assert subject[NameOID.ORGANIZATION_NAME] == "南京医科大学第二附属医院"
    assert subject[NameOID.SERIAL_NUMBER] == "N4102"
    assert subject[NameOID.ORGANIZATION_IDENTIFIER] == "OID:2.16.156.10011.99.1.3"
    # UTF8String for the Chinese names
    org = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0]
    assert org._type.name == "UTF8String"


def test_sign_cosign_and_verify_a_bundle(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    assert (
        main(
            [
                "sign",
                str(GOLDEN_COBRANDED),
                "--key",
                str(keys / "lax2" / "key.pem"),
                "--cert",
                str(keys / "lax2" / "cert.pem"),
                "-o",
                str(one),
            ]
        )
        == 0
    )
    xu = keys / "njmu2" / "xu-jing"
    assert (
        main(
            [
                "sign",
                str(one),
                "--key",
                str(xu / "key.pem"),
                "--cert",
                str(xu / "cert.pem"),
                "--role",
                "verification",
                "-o",
                str(two),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["verify", str(two), "--trust", str(keys / "ca"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)[0]
    assert result["ok"] is True
    assert [(s["index"], s["role"], s["signer"]) for s in result["signatures"]] == [
        (1, "author", "来安县第二人民医院"),
        (2, "verification", "徐静 XU Jing"),
    ]
    assert main(["verify", str(two)]) == 1  # no trust store: not trusted
    assert "no trust store given" in capsys.readouterr().out


def test_sign_with_pkcs12_and_verify_a_pdf_with_a_report(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = serialization.load_pem_private_key((keys / "lax2" / "key.pem").read_bytes(), None)
    certs = load_pem_x509_certificates((keys / "lax2" / "cert.pem").read_bytes())
    p12 = tmp_path / "lax2.p12"
    p12.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"lax2",
            key,
            certs[0],
            certs[1:],  # type: ignore[arg-type]
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    p12.chmod(0o600)  # a signing key others can read is refused
    monkeypatch.setenv("GATEWAY_SIGNING_PASSWORD", "s3cret")
    pdf = tmp_path / "report.pdf"
    assert (
        main(
            [
                "report",
                "variants",
                str(REPORT),
                "--lang",
                "zh-Hans",
                "--pdf",
                str(pdf),
                "-o",
                str(tmp_path / "variant.json"),
            ]
        )
        == 0
    )
    signed = tmp_path / "signed.pdf"
    assert main(["sign", str(pdf), "--key", str(p12), "-o", str(signed)]) == 0
    html, audit = tmp_path / "audit.html", tmp_path / "audit.pdf"
    assert main(["verify", str(signed), "--trust", str(keys / "ca"), "--report", str(html)]) == 0
    text = html.read_text(encoding="utf-8")
    assert "签名验证报告 Signature verification report" in text
    assert "来安县第二人民医院" in text and "作者签名 Author" in text
    assert (
        main(
            [
                "verify",
                str(signed),
                str(GOLDEN_COBRANDED),
                "--trust",
                str(keys / "ca"),
                "--report",
                str(audit),
            ]
        )
        == 1
    )  # the golden Bundle is unsigned
    from pypdf import PdfReader

    pages = PdfReader(audit).pages
    assert len(pages) == 2  # one page per record
    assert "验证未通过" in pages[1].extract_text().replace("\x00", "")


def test_a_wrong_password_is_named_without_the_key(
    keys: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = serialization.load_pem_private_key((keys / "lax2" / "key.pem").read_bytes(), None)
    locked = tmp_path / "locked.pem"
    locked.write_bytes(
        key.private_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"right"),
        )
    )
    code = main(
        [
            "sign",
            str(GOLDEN_COBRANDED),
            "--key",
            str(locked),
            "--cert",
            str(keys / "lax2" / "cert.pem"),
            "-o",
            str(tmp_path / "x.json"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "[signing.key]" in err and "PRIVATE KEY" not in err


def test_sign_with_a_key_from_the_environment(
    keys: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_SIGNING_KEY_NSCH", (keys / "nsch" / "key.pem").read_text())
    monkeypatch.setenv("GATEWAY_SIGNING_CERT_NSCH", (keys / "nsch" / "cert.pem").read_text())
    out = tmp_path / "signed.json"
    assert main(["sign", str(GOLDEN_COBRANDED), "--key", "env:nsch", "-o", str(out)]) == 0
    assert main(["verify", str(out), "--trust", str(keys / "ca")]) == 0
