"""``gateway keys init``, ``gateway sign`` and ``gateway verify``; the helpers the
pipeline and the API use (``signer_for``, ``verify_bytes``).

The lead registers the commands with one line in gateway/cli.py: ``signing.add_cli(sub)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

from ..config import Settings
from ..errors import ConfigError
from ._algorithms import ALGORITHMS, DEFAULT_ALG
from ._bundle import sign_bundle
from ._errors import SigningError
from ._jws import COMMITMENTS
from ._pki import Signer, TrustStore, make_demo_pki
from ._verify import Check, FileReport, load_json, verify_bundle

__all__ = [
    "add_cli",
    "folder_signer",
    "load_signer",
    "parse_rules",
    "signer_for",
    "signing_password",
    "trust_store",
    "verify_bytes",
]


def parse_rules(text: str) -> list[tuple[str, str, str]]:
    """``signing_rules``: ``SENDER/RECORD-TYPE=KEY`` separated by ``;`` or newlines, ``*``
    for any; the first match wins. KEY names a folder of ``signing_keys`` holding
    ``key.pem`` and ``cert.pem`` (e.g. ``lax2`` or ``njmu2/xu-jing``), or ``env:NAME`` for
    ``GATEWAY_SIGNING_KEY_NAME`` / ``GATEWAY_SIGNING_CERT_NAME``."""
    rules = []
    for part in text.replace("\n", ";").split(";"):
        part = part.strip()
        if not part:
            continue
        lhs, eq, key = part.partition("=")
        sender, slash, record_type = lhs.strip().partition("/")
        if not eq or not slash or not key.strip() or not sender.strip():
            raise ConfigError(
                "signing-rules",
                f"signing_rules: {part!r} is not SENDER/RECORD-TYPE=KEY (e.g. LAX2/ORU^R01=lax2)",
            )
        rules.append((sender.strip().upper(), record_type.strip().upper(), key.strip()))
    return rules


def signer_for(settings: Settings, sender: str | None, record_type: str | None) -> Signer | None:
    """The signer configured for outbound records of ``sender`` (facility code) and
    ``record_type`` (e.g. ``ORU^R01``, a DICOM SOP Class or CDA type as the envelope names
    it); None when no rule matches (the record goes unsigned)."""
    for rule_sender, rule_type, key in parse_rules(settings.signing_rules):
        if rule_sender not in ("*", (sender or "").upper()):
            continue
        if rule_type not in ("*", (record_type or "").upper()):
            continue
        return load_signer(settings, key)
    return None


def signing_password() -> bytes | None:
    """GATEWAY_SIGNING_PASSWORD, which opens an encrypted signing key; None when unset."""
    password = os.environ.get("GATEWAY_SIGNING_PASSWORD")
    return password.encode() if password else None


def load_signer(settings: Settings, key: str, setting: str = "signing key") -> Signer:
    """The signer of ``key`` (:func:`folder_signer` over ``signing_keys``); ``setting``
    names what chose the key in errors (``audit_key``)."""
    return folder_signer(settings.signing_keys, key, setting=setting)


def folder_signer(
    signing_keys: Path | None,
    key: str,
    *,
    setting: str = "signing key",
    code: str = "config.signing-key",  # whole: tests/test_error_registry.py reads literals
) -> Signer:
    """The signer of ``key``: ``env:NAME`` (GATEWAY_SIGNING_KEY_NAME), else the folder
    ``signing_keys/KEY`` holding ``key.p12`` (or ``key.pfx``), else ``key.pem`` and
    ``cert.pem``; GATEWAY_SIGNING_PASSWORD opens an encrypted one. Every signer of a
    key folder (records, status Tasks, the audit log, partners' client assertions)
    loads it here, in this order, so one folder is one certificate (the expiry watch,
    metrics/_certs.py, reads it so too). A missing key is a ConfigError ``code``."""
    if key.startswith("env:"):
        found = Signer.from_env(key[4:])
        if found is None:
            raise ConfigError(
                code,
                f"{setting} {key}: GATEWAY_SIGNING_KEY_"
                f"{key[4:].upper().replace('-', '_')} is not set",
            )
        return found
    if signing_keys is None:
        raise ConfigError(code, f"{setting} {key!r}: signing_keys is not set")
    folder = signing_keys / key
    secret = signing_password()
    for name in ("key.p12", "key.pfx"):
        if (folder / name).is_file():
            return Signer.load(folder / name, password=secret)
    return Signer.load(folder / "key.pem", folder / "cert.pem", password=secret)


def trust_store(settings: Settings, given: str | None = None) -> TrustStore | None:
    folder = Path(given) if given else settings.signing_trust
    return TrustStore.load(folder) if folder is not None else None


def verify_bytes(data: bytes, source: str, trust: TrustStore | None) -> FileReport:
    """Verify a signed Bundle (JSON) or a signed PDF."""
    if data[:5] == b"%PDF-":
        from ._pdf import verify_pdf

        return verify_pdf(data, trust, source)
    try:
        bundle = load_json(data, source)
    except SigningError as exc:
        report = FileReport(source, "bundle")
        report.problem = Check("format", False, exc.issue.message, exc.code)
        return report
    return verify_bundle(bundle, trust, source)


def add_cli(subparsers: Any) -> None:
    """Add ``keys init``, ``sign`` and ``verify`` to the ``gateway`` command."""
    keys = subparsers.add_parser("keys", help="signing keys and certificates")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    init = keys_sub.add_parser(
        "init",
        help="make a demo network CA, CRL and a key and certificate per institution and "
        "practitioner of the network (seeds)",
    )
    init.add_argument("--out", required=True, metavar="DIR")
    init.add_argument("--alg", default=DEFAULT_ALG, choices=list(ALGORITHMS))
    init.set_defaults(func=cmd_keys_init)

    sign = subparsers.add_parser(
        "sign", help="sign a Bundle (JWS + Provenance) or a PDF (PAdES); again to co-sign"
    )
    sign.add_argument("file", metavar="FILE", help="a FHIR Bundle (.json) or a PDF")
    sign.add_argument(
        "--key",
        required=True,
        metavar="K",
        help="private key: PEM, DER or PKCS#12 (password: $GATEWAY_SIGNING_PASSWORD), "
        "or env:NAME for $GATEWAY_SIGNING_KEY_NAME and $GATEWAY_SIGNING_CERT_NAME",
    )
    sign.add_argument(
        "--cert", metavar="C", help="certificate chain PEM, leaf first (not needed with PKCS#12)"
    )
    sign.add_argument(
        "--role",
        default="author",
        choices=list(COMMITMENTS),
        help="signature type (FHIR signature-type: author, verification, ...)",
    )
    sign.add_argument("-o", "--output", required=True, metavar="OUT")
    sign.set_defaults(func=cmd_sign)

    verify = subparsers.add_parser(
        "verify",
        help="verify every signature of signed Bundles and PDFs (exit 0: all valid and trusted)",
    )
    verify.add_argument("files", nargs="+", metavar="FILE")
    verify.add_argument(
        "--trust",
        metavar="DIR",
        help="trust store: CA certificates and CRLs (default: signing_trust)",
    )
    verify.add_argument("--json", action="store_true", help="print the results as JSON")
    verify.add_argument(
        "--report", metavar="OUT.html|OUT.pdf", help="write the auditor's verification report"
    )
    verify.set_defaults(func=cmd_verify)


def cmd_keys_init(args: argparse.Namespace, settings: Settings) -> int:
    out = Path(args.out)
    written = make_demo_pki(settings.network, out, args.alg)
    print(
        f"demo network CA {out / 'ca' / 'cert.pem'} (CRL {out / 'ca' / 'crl.pem'}) and "
        f"{len(written) - 1} keys and certificates ({args.alg}) in {out}; DEMO ONLY",
        file=sys.stderr,
    )
    return 0


def cmd_sign(args: argparse.Namespace, settings: Settings) -> int:
    if args.key.startswith("env:"):
        found = Signer.from_env(args.key[4:])
        if found is None:
            raise SigningError("key", f"--key {args.key}: no such key in the environment")
        signer = found
    else:
        signer = Signer.load(
            Path(args.key),
            Path(args.cert) if args.cert else None,
            password=signing_password(),
        )
    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    if data[:5] == b"%PDF-":
        from ._pdf import sign_pdf

        out = sign_pdf(data, signer, args.role)
    else:
        out = orjson.dumps(
            sign_bundle(load_json(data, args.file), signer, args.role), option=orjson.OPT_INDENT_2
        )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_bytes(out)
    print(
        f"signed {args.file} as {signer.name} ({args.role}, {signer.algorithm.name}): "
        f"{args.output}",
        file=sys.stderr,
    )
    return 0


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    trust = trust_store(settings, args.trust)
    reports: list[FileReport] = []
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
            return 2
        reports.append(verify_bytes(data, name, trust))
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps([r.to_json() for r in reports], option=orjson.OPT_INDENT_2) + b"\n"
        )
    else:
        for report in reports:
            _print(report)
    if args.report:
        from ._report import write_report

        write_report(Path(args.report), reports)
        print(f"verification report: {args.report}", file=sys.stderr)
    return 0 if all(r.ok for r in reports) else 1


def _print(report: FileReport) -> None:
    state = "VALID" if report.ok else "INVALID"
    print(f"{report.source}: {state} ({len(report.signatures)} signatures)")
    if report.problem:
        print(f"  error: {report.problem.message} [{report.problem.code}]")
    for sig in report.signatures:
        mark = "ok" if sig.ok else "FAILED"
        print(
            f"  {sig.index}. {sig.signer} — {sig.institution}; role {sig.role or sig.role_display};"
            f" {sig.time}; {sig.algorithm}: {mark}"
        )
        for check in sig.checks:
            if not check.ok:
                print(f"     error: {check.message} [{check.code}]")
