"""Verification: every signature of a Bundle (or PDF, ``_pdf``), check by check.

Each check has a name, a result and, when it fails, the ``signing.*`` code and a message
naming the signature (its index and signer). A file is valid only when it has at least
one signature and every check of every signature passed.
"""

from __future__ import annotations

import binascii
import datetime as dt
import itertools
from base64 import b64decode, b64encode
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from ..errors import Issue
from ._bundle import JOSE, signature_entries, signed_content
from ._errors import SigningError
from ._ijson import duplicate_member
from ._jws import (
    COMMITMENTS,
    SIGNATURE_TYPE_SYSTEM,
    Header,
    format_time,
    parse_header,
    verify_detached,
)
from ._pki import TrustStore, _is_ca, describe

__all__ = ["Check", "FileReport", "SignatureReport", "check_certificate", "verify_bundle"]

CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass
class Check:
    name: str  # content, algorithm, chain, validity, revocation, key-usage, ...
    ok: bool
    message: str = ""
    code: str | None = None


@dataclass
class SignatureReport:
    index: int
    signer: str = "?"
    institution: str = "?"
    role: str | None = None
    role_display: str | None = None
    time: str | None = None
    algorithm: str | None = None
    where: str = ""
    chain: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def label(self) -> str:
        return f"signature {self.index} ({self.signer})"

    def fail(self, name: str, exc: SigningError) -> None:
        self.checks.append(
            Check(name, False, f"{self.label()}: {name}: {exc.issue.message}", exc.code)
        )

    def passed(self, name: str, message: str = "") -> None:
        self.checks.append(Check(name, True, message))


@dataclass
class FileReport:
    source: str
    kind: str  # bundle | pdf
    signatures: list[SignatureReport] = field(default_factory=list)
    resources: list[str] = field(default_factory=list)  # what was signed
    patient: str | None = None
    problem: Check | None = None  # the file could not be read as a signed document

    @property
    def ok(self) -> bool:
        return self.problem is None and bool(self.signatures) and all(s.ok for s in self.signatures)

    def failures(self) -> list[Check]:
        found = [self.problem] if self.problem else []
        return found + [c for s in self.signatures for c in s.checks if not c.ok]

    def issues(self) -> list[Issue]:
        """One issue per failed check (errors) and per valid signature (information,
        ``signing.valid``): what an OperationOutcome of the verification holds."""
        found: list[Issue] = []
        if self.problem is not None:
            code = self.problem.code or "signing.malformed"
            found.append(
                Issue(
                    code,
                    self.problem.message,
                    record=self.source,
                    location=self.problem.name,
                )
            )
        for sig in self.signatures:
            failed = [c for c in sig.checks if not c.ok]
            for check in failed:
                code = check.code or "signing.malformed"
                found.append(
                    Issue(
                        code,
                        check.message,
                        record=self.source,
                        expression=sig.where,
                    )
                )
            if not failed:
                found.append(
                    Issue(
                        "signing.valid",
                        f"signature {sig.index}: {sig.signer} ({sig.institution}), role "
                        f"{sig.role or sig.role_display}, {sig.time}, {sig.algorithm}: "
                        "valid and trusted",
                        record=self.source,
                        expression=sig.where,
                        severity="information",
                        details={"issue_type": "informational"},
                    )
                )
        return found

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        for sig, report in zip(out["signatures"], self.signatures, strict=True):
            sig["ok"] = report.ok
        return out


def check_certificate(
    report: SignatureReport,
    chain: tuple[x509.Certificate, ...],
    signing_time: dt.datetime,
    trust: TrustStore | None,
    now: dt.datetime | None = None,
    *,
    claimed: bool = True,
) -> None:
    """Chain to a trusted root, validity at signing time, revocation (the trust store's
    CRLs), key usage: one check each, added to ``report``. ``claimed``: the signing time
    is only the signer's claim (baseline-B, no trusted time), so the path must also not
    have expired by now — else a key whose certificate expired (and dropped off its
    CA's CRL, RFC 5280 3.3) could sign today with a signing time set back."""
    now = now or dt.datetime.now(dt.UTC)
    leaf = chain[0]
    path = [leaf]
    if trust is None:
        report.fail("chain", SigningError("untrusted", "no trust store given (--trust)"))
    else:
        pool = list(chain[1:]) + trust.roots
        current, root = leaf, None
        for _ in range(6):
            issuer = _issuer(current, pool)
            if issuer is None:
                break
            if issuer in trust.roots:
                root = issuer
                path.append(issuer)
                break
            path.append(issuer)
            current = issuer
        if root is None:
            report.fail(
                "chain",
                SigningError(
                    "untrusted",
                    f"the certificate of {leaf.subject.rfc4514_string()[:80]} does not chain "
                    f"to a CA of the trust store {trust.source}",
                ),
            )
        elif problem := _path_constraints(path):
            report.fail("chain", SigningError("untrusted", problem))
        else:
            report.passed("chain", f"trusted root {root.subject.rfc4514_string()}")
    report.chain = [c.subject.rfc4514_string() for c in path]
    if signing_time > now + CLOCK_SKEW:
        report.fail(
            "validity",
            SigningError("expired", f"signing time {format_time(signing_time)} is in the future"),
        )
    else:
        bad = [
            c for c in path if not c.not_valid_before_utc <= signing_time <= c.not_valid_after_utc
        ]
        if bad:
            c = bad[0]
            report.fail(
                "validity",
                SigningError(
                    "expired",
                    f"certificate {c.subject.rfc4514_string()[:60]} valid "
                    f"{format_time(c.not_valid_before_utc)} to "
                    f"{format_time(c.not_valid_after_utc)}, not at the signing time "
                    f"{format_time(signing_time)} (expired or not yet valid)",
                ),
            )
        elif claimed and (gone := [c for c in path if c.not_valid_after_utc < now]):
            c = gone[0]
            report.fail(
                "validity",
                SigningError(
                    "expired",
                    f"certificate {c.subject.rfc4514_string()[:60]} expired "
                    f"{format_time(c.not_valid_after_utc)}: the signing time "
                    f"{format_time(signing_time)} is the signer's claim (no trusted time), and "
                    "an expired certificate's revocation is no longer published",
                ),
            )
        else:
            report.passed("validity", f"valid at {format_time(signing_time)}")
    if trust is not None:
        _check_revocation(report, path, trust, now)
    _check_key_usage(report, leaf)


def _path_constraints(path: list[x509.Certificate]) -> str | None:
    """What a CA of the path (leaf first) forbids of the certificates below it: more
    CAs than its pathLenConstraint, subjects outside its directoryName name constraints
    (RFC 5280 4.2.1.9, 4.2.1.10) — a partner's CA constrained to its own institution
    cannot issue a certificate in another's name."""
    for n, ca in enumerate(path[1:], 1):
        below = path[:n]
        limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
        if limit is not None and n - 1 > limit:
            return (
                f"the CA {ca.subject.rfc4514_string()[:60]} allows {limit} CA(s) below it, "
                f"the chain has {n - 1}"
            )
        try:
            constraints = ca.extensions.get_extension_for_class(x509.NameConstraints).value
        except x509.ExtensionNotFound:
            continue
        permitted = _directories(constraints.permitted_subtrees)
        excluded = _directories(constraints.excluded_subtrees)
        for cert in below:
            name = cert.subject
            if (permitted and not any(_within(name, t) for t in permitted)) or any(
                _within(name, t) for t in excluded
            ):
                return (
                    f"the certificate of {name.rfc4514_string()[:60]} is outside the name "
                    f"constraints of its CA {ca.subject.rfc4514_string()[:60]}"
                )
    return None


def _directories(subtrees: Any) -> list[x509.Name]:
    return [t.value for t in subtrees or () if isinstance(t, x509.DirectoryName)]


def _within(name: x509.Name, subtree: x509.Name) -> bool:
    """RFC 5280 4.2.1.10: a directoryName is within a subtree that its leading RDNs are."""
    return name.rdns[: len(subtree.rdns)] == subtree.rdns


def _issuer(cert: x509.Certificate, pool: list[x509.Certificate]) -> x509.Certificate | None:
    for candidate in pool:
        if candidate.subject != cert.issuer or candidate == cert or not _is_ca(candidate):
            continue  # an end entity (a partner's signing certificate) issues nothing
        try:
            cert.verify_directly_issued_by(candidate)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return candidate
    return None


def _check_revocation(
    report: SignatureReport, path: list[x509.Certificate], trust: TrustStore, now: dt.datetime
) -> None:
    for cert, issuer in itertools.pairwise(path):
        issuer_key: Any = issuer.public_key()  # a CA key: one of the signing key types
        crl = next(
            (
                c
                for c in trust.crls
                if c.issuer == issuer.subject and c.is_signature_valid(issuer_key)
            ),
            None,
        )
        if crl is None:
            report.fail(
                "revocation",
                SigningError(
                    "no-crl", f"no CRL of {issuer.subject.rfc4514_string()[:60]} in the trust store"
                ),
            )
            return
        if crl.next_update_utc is not None and crl.next_update_utc < now:
            report.fail(
                "revocation",
                SigningError(
                    "no-crl",
                    f"the CRL of {issuer.subject.rfc4514_string()[:60]} expired "
                    f"{format_time(crl.next_update_utc)}",
                ),
            )
            return
        revoked = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if revoked is not None:
            report.fail(
                "revocation",
                SigningError(
                    "revoked",
                    f"certificate {cert.subject.rfc4514_string()[:60]} (serial "
                    f"{cert.serial_number:x}) was revoked "
                    f"{format_time(revoked.revocation_date_utc)}",
                ),
            )
            return
    if len(path) > 1:
        report.passed("revocation", "not revoked (CRL of the trust store)")


def _check_key_usage(report: SignatureReport, leaf: x509.Certificate) -> None:
    try:
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        report.fail("key-usage", SigningError("key-usage", "the certificate has no key usage"))
        return
    if not (usage.digital_signature or usage.content_commitment):
        report.fail(
            "key-usage",
            SigningError(
                "key-usage",
                "the certificate's key usage allows neither digitalSignature nor nonRepudiation",
            ),
        )
        return
    report.passed("key-usage", "digitalSignature/nonRepudiation")


def verify_bundle(
    bundle: Any,
    trust: TrustStore | None,
    source: str = "bundle",
    now: dt.datetime | None = None,
) -> FileReport:
    """Every signature of a signed Bundle, in signing order."""
    report = FileReport(source, "bundle")
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        report.problem = Check("format", False, f"{source}: not a FHIR Bundle", "signing.bad-input")
        return report
    _describe_content(report, bundle)
    positions = signature_entries(bundle)
    entries = bundle.get("entry") or []
    if not positions and not bundle.get("signature"):
        report.problem = Check(
            "signatures", False, f"{source}: the Bundle is not signed", "signing.unsigned"
        )
        return report
    if positions:
        for k, pos in enumerate(positions, 1):
            sig = _first_signature(entries[pos]["resource"])
            where = f"Bundle.entry[{pos}].resource.signature[0]"
            one = _verify_one(bundle, k, sig, where, trust, now)
            _check_agent(one, entries[pos]["resource"], sig)
            report.signatures.append(one)
        last = _first_signature(entries[positions[-1]]["resource"])
        sig_report = report.signatures[-1]
        if bundle.get("signature") != last:
            sig_report.fail(
                "Bundle.signature",
                SigningError(
                    "mismatch",
                    "Bundle.signature is not the latest signature's copy "
                    "(it was changed or removed)",
                ),
            )
    else:
        report.signatures.append(
            _verify_one(bundle, None, bundle.get("signature"), "Bundle.signature", trust, now)
        )
    return report


def _first_signature(provenance: dict[str, Any]) -> Any:
    """``signature[0]`` of a signature Provenance, None when it has none (R4 allows
    ``Provenance.signature`` to be absent: that signature then fails as malformed)."""
    found = provenance.get("signature")
    return found[0] if isinstance(found, list) and found else None


def _describe_content(report: FileReport, bundle: dict[str, Any]) -> None:
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        kind = str(resource.get("resourceType"))
        if kind == "Provenance":
            continue
        report.resources.append(f"{kind} {entry.get('fullUrl', resource.get('id', ''))}")
        if kind == "Patient" and report.patient is None:
            report.patient = str(entry.get("fullUrl") or f"Patient/{resource.get('id')}")


def _verify_one(
    bundle: dict[str, Any],
    k: int | None,
    sig: Any,
    where: str,
    trust: TrustStore | None,
    now: dt.datetime | None,
) -> SignatureReport:
    report = SignatureReport(k or 1, where=where)
    claimed = sig.get("who") if isinstance(sig, dict) else None
    if isinstance(claimed, dict) and isinstance(claimed.get("display"), str):
        report.signer = claimed["display"]  # as the Bundle claims, until the JWS says
    try:
        if not isinstance(sig, dict) or sig.get("sigFormat") != JOSE:
            raise SigningError("malformed", f"{where} is not a JWS signature (sigFormat {JOSE})")
        data = str(sig.get("data", ""))
        try:
            jws = b64decode(data, validate=True).decode("ascii")
        except (binascii.Error, UnicodeDecodeError):
            raise SigningError("malformed", f"{where}.data is not base64 of a JWS") from None
        if b64encode(jws.encode("ascii")).decode("ascii") != data:  # one spelling only
            raise SigningError("malformed", f"{where}.data is not canonical base64")
        _name_signer(report, jws)
        header = verify_detached(jws, signed_content(bundle, k))
    except SigningError as exc:
        name = {"content-changed": "content"}.get(exc.code.split(".", 1)[1], "jws")
        report.fail(name, exc)
        return report
    _fill(report, header)
    report.passed("content", "the signed content is intact")
    _check_metadata(report, sig, header)
    check_certificate(report, header.chain, header.signing_time, trust, now)
    return report


def _name_signer(report: SignatureReport, jws: str) -> None:
    """Name the signer in messages before the content is checked (when the header can
    be read at all)."""
    try:
        header = parse_header(jws)[0]
    except SigningError:
        return
    report.signer, report.institution, _ = describe(header.chain[0])


def _fill(report: SignatureReport, header: Header) -> None:
    report.signer, report.institution, _ = describe(header.chain[0])
    report.role = header.role
    report.role_display = COMMITMENTS[header.role][1] if header.role else header.commitment_oid
    report.time = format_time(header.signing_time)
    report.algorithm = header.alg
    report.passed("jws", f"{header.alg}, kid = x5c thumbprint, crit understood")


def _check_metadata(report: SignatureReport, sig: dict[str, Any], header: Header) -> None:
    """Signature.type / when / who say what the signed header says."""
    codes = {(c.get("system"), c.get("code")) for c in sig.get("type") or [] if isinstance(c, dict)}
    problems = []
    if (SIGNATURE_TYPE_SYSTEM, header.commitment_oid) not in codes:
        problems.append(f"Signature.type is not the header's commitment {header.commitment_oid}")
    if sig.get("when") != format_time(header.signing_time):
        problems.append(f"Signature.when is not the header's sigT {report.time}")
    _, _, who = describe(header.chain[0])
    display = (sig.get("who") or {}).get("display")
    ident = (sig.get("who") or {}).get("identifier")
    if ident is not None and ident != who["identifier"]:
        problems.append("Signature.who is not the certificate's subject")
    elif ident is None and display != who["display"]:
        problems.append("Signature.who does not name the certificate's subject")
    if problems:
        report.fail("metadata", SigningError("mismatch", "; ".join(problems)))
    else:
        report.passed("metadata", "Signature.type, when and who agree with the JWS header")


def _check_agent(report: SignatureReport, provenance: dict[str, Any], sig: Any) -> None:
    """The signature Provenance's agent is the signer (Signature.who): a FHIR reader
    takes Provenance.agent for who signed, and the signer could name someone else
    there under a signature of their own."""
    agents = provenance.get("agent") or []
    agent = agents[0].get("who") if agents and isinstance(agents[0], dict) else None
    who = sig.get("who") if isinstance(sig, dict) else None
    if not isinstance(agent, dict) or not isinstance(who, dict) or _same_party(agent, who):
        return
    # replaces the 'metadata agrees' line: it does not
    report.checks = [c for c in report.checks if not (c.name == "metadata" and c.ok)]
    report.fail(
        "metadata",
        SigningError(
            "mismatch", "Provenance.agent[0].who does not name the signer (Signature.who)"
        ),
    )


def _same_party(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two References name the same party: every one of reference, identifier
    and display that both give is equal, and they give at least one in common."""
    common = [key for key in ("reference", "identifier", "display") if key in a and key in b]
    return bool(common) and all(a[key] == b[key] for key in common)


def load_json(data: bytes, source: str) -> Any:
    """The JSON of a file to verify. A member name twice in one object is refused: JSON
    parsers keep the first or the last, so the signed value and what another reader
    sees could differ (RFC 8259 4; RFC 7515 5.2 for the same reason in headers)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SigningError("bad-input", f"{source}: neither JSON nor PDF") from None
    found = duplicate_member(data)  # orjson keeps the last silently
    if found is not None:
        raise SigningError(
            "bad-input",
            f"{source}: duplicate key {found[1][:40]!r} in one JSON object: two readers may "
            "take different values, so what was signed is ambiguous",
        )
    return value
