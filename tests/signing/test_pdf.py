"""Done when: the co-signed co-branded report verifies as PDF with two signatures, each
with its role; pyHanko's own validator sees both intact; one changed byte breaks them."""

from __future__ import annotations

import asyncio
import warnings
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from gateway.config import Settings
from gateway.reports import variants_for
from gateway.signing import Signer, TrustStore
from gateway.signing._pdf import sign_pdf, verify_pdf

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "examples" / "imaging" / "bundles" / "lax2-ct-report-cobranded.json"


@pytest.fixture(scope="module")
def report_pdf() -> bytes:
    """The reports stage's PDF (what ``gateway report variants ... --pdf`` writes)."""
    return variants_for(Settings.load()).variant(REPORT.read_bytes(), "zh-Hans").pdf


@pytest.fixture(scope="module")
def cosigned_pdf(report_pdf: bytes, lax2: Signer, xu_jing: Signer) -> bytes:
    return sign_pdf(sign_pdf(report_pdf, lax2, "author"), xu_jing, "verification")


def _pyhanko_statuses(data: bytes) -> list[Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pyhanko.pdf_utils.reader import PdfFileReader
        from pyhanko.sign.validation import async_validate_pdf_signature

        reader = PdfFileReader(BytesIO(data), strict=False)
        return [asyncio.run(async_validate_pdf_signature(s)) for s in reader.embedded_signatures]


def test_cosigned_pdf_verifies_with_both_roles(cosigned_pdf: bytes, trust: TrustStore) -> None:
    report = verify_pdf(cosigned_pdf, trust, "report.pdf")
    assert report.ok, report.failures()
    assert [(s.index, s.role, s.signer) for s in report.signatures] == [
        (1, "author", "来安县第二人民医院"),
        (2, "verification", "徐静 XU Jing"),
    ]


def test_pyhankos_validator_sees_both_intact(cosigned_pdf: bytes) -> None:
    statuses = _pyhanko_statuses(cosigned_pdf)
    assert len(statuses) == 2
    assert all(s.intact and s.valid for s in statuses)
    # the first signature's revision is followed by an incremental update that only adds
    # the second signature
    assert statuses[0].coverage.name == "ENTIRE_REVISION"
    assert statuses[1].coverage.name == "ENTIRE_FILE"


def test_the_signature_block_is_visible_text(cosigned_pdf: bytes) -> None:
    from pypdf import PdfReader

    reader = PdfReader(BytesIO(cosigned_pdf))
    widgets = [
        a.get_object()
        for page in reader.pages
        for a in page.get("/Annots") or []
        if a.get_object().get("/FT") == "/Sig"
    ]
    assert len(widgets) == 2
    assert all(w["/Rect"][2] > w["/Rect"][0] for w in widgets)  # not invisible (0×0)


def test_one_changed_byte_breaks_both(cosigned_pdf: bytes, trust: TrustStore) -> None:
    data = bytearray(cosigned_pdf)
    at = data.index(b"stream", len(data) // 10) + 20  # inside the first revision's content
    data[at] ^= 0x01
    statuses = _pyhanko_statuses(bytes(data))
    assert not any(s.intact for s in statuses)
    report = verify_pdf(bytes(data), trust, "report.pdf")
    assert not report.ok
    assert {s.index for s in report.signatures if not s.ok} == {1, 2}
    failed = [c for s in report.signatures for c in s.checks if not c.ok]
    assert failed[0].code == "signing.content-changed"
    assert failed[0].message.startswith("signature 1 (来安县第二人民医院): content:")


def test_an_unsigned_pdf_is_named(report_pdf: bytes, trust: TrustStore) -> None:
    report = verify_pdf(report_pdf, trust, "report.pdf")
    assert report.problem is not None and report.problem.code == "signing.unsigned"


@pytest.mark.parametrize("alg", ["ES384", "EdDSA", "PS256"])
def test_other_algorithms_sign_pdfs(alg: str, report_pdf: bytes, tmp_path: Path) -> None:
    from gateway.datafiles import data_dir
    from gateway.signing import make_demo_pki

    make_demo_pki(data_dir("seeds") / "network.yaml", tmp_path, alg)
    signer = Signer.load(tmp_path / "nsch" / "key.pem", tmp_path / "nsch" / "cert.pem")
    report = verify_pdf(sign_pdf(report_pdf, signer), TrustStore.load(tmp_path / "ca"))
    assert report.ok, report.failures()
    if alg == "ES384":  # a P-384 key signs a SHA-384 digest, as ES384 does
        assert (report.signatures[0].algorithm or "").startswith("sha384")
