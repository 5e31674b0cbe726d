"""``gateway audit``: verify, export, sign-head, transfers (registered by ``add_cli`` in
gateway/cli.py).

    gateway audit verify [FILE] [--cert PEM] [--trust DIR] [--checkpoint FILE]
                                             the live log (against kept heads), or an export
    gateway audit export [--patient ID] [--consent ID] [--partner ORG] [--since T] [--until T]
                         [-o FILE]
    gateway audit sign-head [--key K] [--cert C] [-o FILE]   sign the current tree head now
    gateway audit transfers --year Y [--format html|csv|json] [-o FILE]
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from cryptography import x509

from ..config import Settings
from ..errors import ConfigError
from ..signing import Signer, TrustStore, load_signer, signing_password
from ._events import IRCP, Party, Subject, event, operator_action
from ._export import ExportFilter, export_bundle, load_checkpoint, verify_export
from ._log import AuditError, AuditLog, SignedHead
from ._verify import CertCheck, Verdict, cert_checker, verify_log

__all__ = ["add_cli", "audit_signer", "open_log"]


def open_log(settings: Settings) -> AuditLog:
    from ..store import open_store

    return AuditLog(open_store(settings))


def audit_signer(settings: Settings) -> Signer | None:
    """The gateway's key for tree heads: ``audit_key`` (a folder of ``signing_keys`` or
    ``env:NAME``, as a KEY of signing_rules, loaded as they are); None when it is not
    set."""
    key = settings.audit_key.strip()
    return load_signer(settings, key, "audit_key") if key else None


def _certificates(name: str) -> list[x509.Certificate]:
    """The first certificate of a PEM or DER file: a chain file pins its leaf."""
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise ConfigError("bad-setting", f"--cert {name}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)[:1]
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigError("bad-setting", f"--cert {name}: not a PEM or DER certificate") from None


def _operator() -> str:
    try:
        return os.environ.get("GATEWAY_OPERATOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


# Other names of a patient given to `export --patient`: the policy's keyed pseudonym of
# a SYSTEM|VALUE, under which decisions and consents name their patient. Given by the
# caller (gateway/cli.py): the policy stage builds on the audit trail, not the reverse.
PatientAliases = Callable[[Settings, str], tuple[str, ...]]


def _year(text: str) -> int:
    """A four-digit year: `--year 26` was read as the year 26 and reported nothing."""
    if not (len(text) == 4 and text.isdigit() and text[0] != "0"):
        raise argparse.ArgumentTypeError(f"give the year in four digits (2026), not {text!r}")
    return int(text)


def add_cli(subparsers: Any, aliases: PatientAliases | None = None) -> None:
    audit = subparsers.add_parser(
        "audit", help="the audit trail: verify, export, sign tree heads, transfer report"
    )
    sub = audit.add_subparsers(dest="audit_command", required=True)

    verify = sub.add_parser(
        "verify",
        help="verify the live audit log (no FILE) or an exported Bundle offline "
        "(exit 0: intact; 1: a problem, one line each)",
    )
    verify.add_argument("file", nargs="?", metavar="FILE")
    verify.add_argument(
        "--cert",
        action="append",
        default=[],
        metavar="PEM",
        help="the gateway's certificate (or its CA's) the tree heads must be signed with",
    )
    verify.add_argument("--trust", metavar="DIR", help="trust store (CA certificates, CRLs)")
    verify.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="FILE",
        help="a head kept outside the database (an export, or sign-head -o): the live log "
        "must still hold the tree it signed (truncation, a restored old backup)",
    )
    verify.add_argument("--json", action="store_true", help="the result as JSON")
    verify.set_defaults(func=cmd_verify)

    export = sub.add_parser("export", help="events as a FHIR Bundle with a signed head and proofs")
    export.add_argument(
        "--patient",
        help="Patient id, Patient/<id>, system|value (also found by its policy pseudonym) "
        "or a value",
    )
    export.add_argument("--partner", help="partner facility code")
    export.add_argument(
        "--consent", help="a Consent id: the decisions that rest on it and its own events"
    )
    export.add_argument("--since", help="ISO 8601 time or a span back (7d)")
    export.add_argument("--until", help="ISO 8601 time or a span back (exclusive)")
    export.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    export.set_defaults(func=cmd_export, aliases=aliases)

    head = sub.add_parser("sign-head", help="sign the log's current tree head now")
    head.add_argument("--key", help="private key file (default: the audit_key setting)")
    head.add_argument("--cert", help="its certificate chain (PEM, leaf first)")
    head.add_argument(
        "-o", "--output", metavar="FILE", help="also write the signed head (JSON) to keep"
    )
    head.set_defaults(func=cmd_sign_head)

    report = sub.add_parser(
        "transfers", help="records and individuals that crossed the boundary, per partner and basis"
    )
    report.add_argument("--year", type=_year, required=True, help="the calendar year, e.g. 2026")
    report.add_argument("--format", choices=("html", "csv", "json"), default="html")
    report.add_argument("-o", "--output", metavar="FILE", help="default: stdout")
    report.set_defaults(func=cmd_transfers)


def verify_live(
    log: AuditLog, trusted: CertCheck | None, kept: Sequence[SignedHead] = ()
) -> Verdict:
    """The live log verified (``gateway audit verify``, the console's auditor page);
    without a certificate, signed heads are named untrusted: whoever can write the
    database can sign heads with a key of their own."""
    verdict = verify_log(log, trusted, kept)
    if trusted is None and (verdict.heads or kept):
        verdict.add(
            "audit.untrusted-head",
            "no certificate given (--cert, --trust or signing_trust): the signer of "
            "the tree heads is not checked, and anyone can sign a head",
        )
    return verdict


def default_checker(settings: Settings) -> CertCheck | None:
    """The trust store ``signing_trust`` names, when it does."""
    folder = settings.signing_trust
    return cert_checker([], TrustStore.load(folder)) if folder is not None else None


def _checker(args: argparse.Namespace, settings: Settings) -> CertCheck | None:
    certs = [c for name in args.cert for c in _certificates(name)]
    folder = Path(args.trust) if args.trust else settings.signing_trust
    trust = TrustStore.load(folder) if folder is not None and (args.trust or not certs) else None
    return cert_checker(certs, trust) if certs or trust else None


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    trusted = _checker(args, settings)
    if args.file:  # offline: the file and the certificate, no store
        try:
            data = Path(args.file).read_bytes()
            bundle = orjson.loads(data)
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 2
        except orjson.JSONDecodeError:
            bundle = None
        verdict = verify_export(bundle, args.file, trusted)
        if trusted is None:
            verdict.add(
                "audit.untrusted-head",
                "no certificate given (--cert or --trust): the signer is not checked",
            )
    else:
        try:
            kept = [_checkpoint(name) for name in args.checkpoint]
        except AuditError as exc:
            print(f"error: {exc.issue.message} [{exc.code}]", file=sys.stderr)
            return 2
        verdict = verify_live(open_log(settings), trusted, kept)
    _print(verdict, args.json)
    return 0 if verdict.ok else 1


def _checkpoint(name: str) -> SignedHead:
    try:
        value = orjson.loads(Path(name).read_bytes())
    except OSError as exc:
        raise AuditError("audit.bad-export", f"--checkpoint {name}: {exc.strerror}") from None
    except orjson.JSONDecodeError:
        raise AuditError("audit.bad-export", f"--checkpoint {name}: not JSON") from None
    try:
        return load_checkpoint(value)
    except AuditError as exc:
        raise AuditError("audit.bad-export", f"--checkpoint {name}: {exc.issue.message}") from None


def _print(verdict: Verdict, as_json: bool) -> None:
    if as_json:
        out = {
            "source": verdict.source,
            "ok": verdict.ok,
            "entries": verdict.entries,
            "heads": verdict.heads,
            "signers": verdict.signers,
            "problems": [
                {"code": p.code, "message": p.message, "index": p.index, "event": p.event_id}
                for p in verdict.problems
            ],
        }
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
        return
    for problem in verdict.problems:
        print(problem.line())
    state = (
        "审计日志完整 audit log intact" if verdict.ok else "审计日志验证失败 verification FAILED"
    )
    print(
        f"{verdict.source}: {state}: {verdict.entries} entries, {verdict.heads} signed heads, "
        f"{len(verdict.problems)} problems"
        + "".join(f"\n  signed by {s}" for s in verdict.signers[:3]),
        file=sys.stderr if verdict.ok else sys.stdout,
    )


def _sign(settings: Settings, args: argparse.Namespace | None = None) -> Signer:
    if args is not None and args.key:
        # an encrypted key opens as `gateway sign --key`'s and a key folder's do
        return Signer.load(
            Path(args.key), Path(args.cert) if args.cert else None, password=signing_password()
        )
    signer = audit_signer(settings)
    if signer is None:
        raise AuditError(
            "audit.no-key",
            "no key to sign tree heads: set audit_key (a folder of signing_keys or "
            "env:NAME) or give --key",
        )
    return signer


def cmd_sign_head(args: argparse.Namespace, settings: Settings) -> int:
    log = open_log(settings)
    head = log.sign_head(_sign(settings, args))
    if args.output:
        Path(args.output).write_bytes(orjson.dumps(head.to_json(), option=orjson.OPT_INDENT_2))
    log.record(operator_action("sign-head", _operator(), Subject()))
    print(
        f"signed tree head #{head.id}: size {head.tree_size}, root {head.root_hash.hex()}",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from ..store import parse_since

    where = ExportFilter(
        args.patient,
        args.partner,
        parse_since(args.since, settings.timezone) if args.since else None,
        parse_since(args.until, settings.timezone) if args.until else None,
        args.consent,
        args.aliases(settings, args.patient) if args.aliases and args.patient else (),
    )
    log = open_log(settings)
    head = log.latest_head()
    if head is None or head.tree_size < log.size():
        signer = audit_signer(settings)
        if signer is not None:
            head = log.sign_head(signer)
        elif head is None:
            raise AuditError(
                "audit.no-key",
                "no signed tree head yet and no audit_key to sign one: "
                "run `gateway audit sign-head --key K --cert C` first",
            )
    bundle = export_bundle(log, where, head)
    data = orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n"
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    detail = tuple((k, v) for k, v in where.to_json().items() if k != "patient")
    log.record(
        event(
            "audit-export",
            outcome_desc="export",
            subject=Subject(where.patient, (), detail),
            agents=[Party("operator", _operator(), requestor=True, role=IRCP)],
        )
    )
    count = len(bundle["entry"]) - 1
    print(
        f"exported {count} events under signed head #{head.id} (size {head.tree_size})"
        + (f": {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0


def cmd_transfers(args: argparse.Namespace, settings: Settings) -> int:
    from ..network import Network
    from ..store import open_store
    from ._transfers import render, transfers

    rows = transfers(open_store(settings), args.year, Network.load(settings.network))
    text = render(rows, args.year, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def periodic(settings: Settings, every: dt.timedelta = dt.timedelta(hours=1)) -> Any:
    """For the serve loop: a function to call now and then (e.g. every minute) that signs
    a new tree head when the log grew and the last head is older than ``every``."""
    signer = audit_signer(settings)
    log = open_log(settings)

    def tick() -> None:
        if signer is not None:
            log.sign_if_due(signer, every)

    return tick
