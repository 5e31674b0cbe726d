"""PAdES signatures on report PDFs (pyHanko): baseline B-B (ETSI.CAdES.detached with the
signing-certificate-v2 attribute), a visible bilingual block naming signer, institution,
role and time; a co-signature is an incremental update, so the first stays intact."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import warnings
from io import BytesIO
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ._errors import SigningError
from ._font import font_file
from ._labels import label
from ._pki import Signer, TrustStore, describe
from ._verify import Check, FileReport, SignatureReport, check_certificate

__all__ = ["sign_pdf", "verify_pdf"]

_BOX_W, _BOX_H, _MARGIN = 250, 72, 36


def _pyhanko() -> Any:
    # pyHanko imports cryptography's deprecated DSA module; the warning is not ours
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyhanko.sign
        import pyhanko.sign.validation
        import pyhanko.stamp
        from pyhanko.pdf_utils.font import opentype  # noqa: F401
        from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter  # noqa: F401
        from pyhanko.pdf_utils.reader import PdfFileReader  # noqa: F401
    import pyhanko

    return pyhanko


def _digest_for(signer: Signer) -> str:
    # Ed25519 in CMS signs a SHA-512 digest (RFC 8419); P-384 pairs with SHA-384 as ES384
    # does; SHA-256 otherwise
    if isinstance(signer.key, ed25519.Ed25519PrivateKey):
        return "sha512"
    return "sha384" if signer.algorithm.name == "ES384" else "sha256"


def sign_pdf(data: bytes, signer: Signer, role: str = "author") -> bytes:
    """The PDF with one more PAdES signature (an incremental update)."""
    _pyhanko()
    from asn1crypto import keys as asn1_keys
    from asn1crypto import x509 as asn1_x509
    from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
    from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
    from pyhanko.pdf_utils.misc import PdfError
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.pdf_utils.text import TextBoxStyle
    from pyhanko.sign import fields, signers
    from pyhanko.stamp import TextStampStyle
    from pyhanko_certvalidator.registry import SimpleCertificateStore

    from ._jws import commitment

    commitment(role)  # refuse unknown roles
    try:
        reader = PdfFileReader(BytesIO(data))
        count = len(reader.embedded_signatures)
        pages = int(reader.root["/Pages"]["/Count"])
        writer = IncrementalPdfFileWriter(BytesIO(data))
    except (PdfError, ValueError, KeyError) as exc:
        raise SigningError("pdf", f"the PDF cannot be read for signing: {exc}") from None
    der = [c.public_bytes(serialization.Encoding.DER) for c in signer.chain]
    key = signer.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cms_signer = signers.SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(der[0]),
        signing_key=asn1_keys.PrivateKeyInfo.load(key),
        cert_registry=SimpleCertificateStore.from_certs(  # type: ignore[no-untyped-call]
            [asn1_x509.Certificate.load(d) for d in der[1:]]
        ),
        prefer_pss=isinstance(signer.key, rsa.RSAPrivateKey),
    )
    text = "\n".join(
        [
            f"{label('stamp', 'signer')}: {signer.name}",
            f"{label('stamp', 'institution')}: {signer.institution}",
            f"{label('stamp', 'role')}: {label('roles', role)}"
            + (f" · {signer.role_title}" if signer.role_title else ""),
            f"{label('stamp', 'time')}: %(ts)s",
        ]
    )
    style = TextStampStyle(
        stamp_text=text,
        timestamp_format="%Y-%m-%d %H:%M:%S UTC",
        text_box_style=TextBoxStyle(font=GlyphAccumulatorFactory(font_file()), font_size=7),
        border_width=1,
    )
    column, row = count % 2, count // 2
    x = _MARGIN + column * (_BOX_W + 10)
    y = _MARGIN + row * (_BOX_H + 8)
    field_name = f"Signature{count + 1}"
    meta = signers.PdfSignatureMetadata(
        field_name=field_name,
        md_algorithm=_digest_for(signer),
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=f"{label('roles', role, both=False)} ({role})",
        name=signer.name,
        location=signer.institution,
    )
    pdf_signer = signers.PdfSigner(
        meta,
        signer=cms_signer,
        stamp_style=style,
        new_field_spec=fields.SigFieldSpec(
            field_name, on_page=pages - 1, box=(x, y, x + _BOX_W, y + _BOX_H)
        ),
    )
    out = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            pdf_signer.sign_pdf(writer, output=out)
        except (PdfError, ValueError) as exc:  # pyHanko's SigningError is a ValueError
            raise SigningError("pdf", f"pyHanko could not sign the PDF: {exc}") from None
    return out.getvalue()


def _validation_context(trust: TrustStore | None) -> Any:
    """pyHanko's context: the trust store's roots and CRLs, nothing fetched. Its trust
    verdict is not the one reported (``check_certificate`` is, as for JSON), but with it
    pyHanko builds the path quietly."""
    from asn1crypto import x509 as asn1_x509
    from pyhanko_certvalidator import ValidationContext

    roots = [
        asn1_x509.Certificate.load(c.public_bytes(serialization.Encoding.DER))
        for c in (trust.roots if trust else [])
    ]
    crls = [c.public_bytes(serialization.Encoding.DER) for c in (trust.crls if trust else [])]
    logging.getLogger("pyhanko.sign.validation.generic_cms").setLevel(logging.ERROR)
    return ValidationContext(trust_roots=roots, crls=crls, allow_fetching=False)


def verify_pdf(
    data: bytes,
    trust: TrustStore | None,
    source: str = "pdf",
    now: dt.datetime | None = None,
) -> FileReport:
    """Every PAdES signature of a PDF: pyHanko says whether it is intact and valid and
    what it covers; chain, validity, revocation and key usage are checked as for JSON."""
    _pyhanko()
    from cryptography import x509
    from pyhanko.pdf_utils.misc import PdfError
    from pyhanko.pdf_utils.reader import PdfFileReader
    from pyhanko.sign.validation import async_validate_pdf_signature

    from ._jws import COMMITMENTS

    report = FileReport(source, "pdf")
    context = _validation_context(trust)
    try:
        reader = PdfFileReader(BytesIO(data), strict=False)
        embedded = list(reader.embedded_signatures)
    except (PdfError, ValueError, KeyError) as exc:
        report.problem = Check(
            "format", False, f"{source}: not a readable PDF ({exc})", "signing.bad-input"
        )
        return report
    report.resources = [f"PDF, {len(data)} bytes"]
    if not embedded:
        report.problem = Check(
            "signatures", False, f"{source}: the PDF is not signed", "signing.unsigned"
        )
        return report
    for n, emb in enumerate(embedded, 1):
        sig = SignatureReport(n, where=f"PDF field {emb.field_name}")
        report.signatures.append(sig)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                status = asyncio.run(async_validate_pdf_signature(emb, context))
        except Exception as exc:  # pyHanko raises many kinds for damaged signatures
            sig.fail(
                "pdf", SigningError("pdf", f"pyHanko cannot validate it: {type(exc).__name__}")
            )
            continue
        certs = [x509.load_der_x509_certificate(c.dump()) for c in emb.signed_data["certificates"]]
        leaf = x509.load_der_x509_certificate(status.signing_cert.dump())
        chain = (leaf, *[c for c in certs if c != leaf])
        sig.signer, sig.institution, _ = describe(leaf)
        reason = str(emb.sig_object.get("/Reason", ""))
        role = reason.rsplit("(", 1)[-1].rstrip(")") if "(" in reason else None
        sig.role = role if role in COMMITMENTS else None
        sig.role_display = COMMITMENTS[sig.role][1] if sig.role else reason or None
        when = status.signer_reported_dt or dt.datetime.now(dt.UTC)
        sig.time = when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sig.algorithm = (
            str(status.md_algorithm)
            + " / "
            + str(emb.signer_info["signature_algorithm"]["algorithm"].native)
        )
        if status.intact and status.valid:
            sig.passed("content", "pyHanko: intact and valid")
        else:
            sig.fail(
                "content",
                SigningError(
                    "content-changed",
                    f"pyHanko: intact={status.intact} valid={status.valid}: the signed bytes "
                    "changed after signing (or the signature is damaged)",
                ),
            )
        level = status.modification_level
        coverage = getattr(status.coverage, "name", str(status.coverage))
        if status.docmdp_ok is False or (
            coverage != "ENTIRE_FILE"
            and level is not None
            and level.name not in ("NONE", "LTA_UPDATES", "FORM_FILLING")
        ):
            sig.fail(
                "coverage",
                SigningError(
                    "content-changed",
                    f"the PDF was changed after this signature beyond adding signatures "
                    f"({coverage}, {getattr(level, 'name', level)})",
                ),
            )
        else:
            sig.passed(
                "coverage", f"{coverage}" + (f", later: {level.name}" if level is not None else "")
            )
        check_certificate(sig, chain, when, trust, now)
    return report
