"""Bearer tokens for the API and the role each one holds: read from a file, never from
the repo.

One token per line, optionally followed by its role, a name and an institution
(whitespace between; ``#`` starts a comment line)::

    Yz1…Qk                          a line without a role: operator (as before roles)
    Hk9…aw  auditor  compliance-hk  the name appears in the audit trail
    Zr2…p0  admin
    Pq7…x4  operator pacs-hkpmc hkpmc   bound to an institution (below)

A token bound to an institution (its key exactly as the network file writes it, as
partner token lines name theirs) stands for that institution's systems and may use only
STOW-RS (``/dicomweb/``; any other route answers 403: ``/convert`` and ``$reprocess``
take records without the sender check). STOW-RS takes
from it only studies whose identifiers name that institution (IssuerOfPatientID, its
qualifiers, InstitutionName, the accession number's issuer); any other study is refused
whole, ``intake.dicom-sender-mismatch`` (docs/listeners-dicom.md). A token without one
is unchanged.

Roles are the web console's three: ``operator`` runs the gateway (every route of the
API as it was before roles: convert, messages and ``$reprocess``, policy and consents,
inbound reads and referral actions) but may not read the audit log; ``auditor`` reads
the audit log (``GET /fhir/AuditEvent``) and nothing else; ``admin`` both. A line
without a role keeps exactly the rights tokens had before roles existed (operator): an
old token file gains no access to the audit log. An unknown role refuses the whole file.

With no ``api_token_file`` configured, the gateway keeps its tokens in
``$GATEWAY_HOME/secrets/api-tokens`` and creates that file with one random token
(mode 0600) the first time the API starts, so a fresh installation is usable and
never open. A token file group or others may read, write or run (any mode but 0600
or stricter) is refused, as the pseudonym and signing keys are: ``chmod 600`` it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings, not_private, private_folder
from ..errors import ConfigError, Issue, shape
from ..network import Network, exact_key_problem

__all__ = [
    "AUDIT_PATH",
    "ROLES",
    "AccessDenied",
    "Principal",
    "TokenSet",
    "load_tokens",
    "permission_for",
]

ROLES = ("operator", "auditor", "admin")  # the web console's role names
DEFAULT_ROLE = "operator"  # a line without a role: the rights tokens had before roles
# What each role may do: "api" every route but the audit log's, "audit" the audit log.
PERMISSIONS: dict[str, frozenset[str]] = {
    "operator": frozenset({"api"}),
    "auditor": frozenset({"audit"}),
    "admin": frozenset({"api", "audit"}),
}
AUDIT_PATH = "/fhir/AuditEvent"
# The only routes of a token bound to an institution (STOW-RS and its $commit)
BOUND_PREFIX = "/dicomweb/"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token is: a name (the line's, else a fingerprint of the token: never the
    token itself), a role, and the institution key it is bound to (None: not bound)."""

    name: str
    role: str
    institution: str | None = None

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS[self.role]


class AccessDenied(Exception):
    """The request has no valid token (401) or its role may not do this (403)."""

    def __init__(self, status: int, issue: Issue) -> None:
        super().__init__(issue.message)
        self.status = status
        self.issue = issue
        self.headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None


def permission_for(path: str) -> str:
    """The permission a route needs: the audit log's own, or the API's."""
    if path == AUDIT_PATH or path.startswith(AUDIT_PATH + "/"):
        return "audit"
    return "api"


def fingerprint(token: str) -> str:
    """A stable, non-secret name for a token without one (48 bits of its SHA-256)."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _parse(
    line: str, number: int, source: Path | None, network: Network | None
) -> tuple[bytes, Principal]:
    token, *rest = line.split()
    role = rest[0] if rest else DEFAULT_ROLE
    where = f"{source or 'the API tokens'}, line {number}"
    if role not in ROLES or len(rest) > 3:
        raise ConfigError(
            "bad-token-role",
            f"{where}: a token line is TOKEN [ROLE [NAME [INSTITUTION]]] with ROLE one of "
            f"{', '.join(ROLES)} (found {len(rest)} word(s) after the token, the first of "
            f"form {shape(role)})",
        )
    name = rest[1] if len(rest) > 1 else fingerprint(token)
    institution = rest[2] if len(rest) > 2 else None
    if institution is not None:
        _check_institution(institution, network, where)
    return token.encode(), Principal(name, role, institution)


def _check_institution(key: str, network: Network | None, where: str) -> None:
    """A bound token's institution must be a network key, exactly: a token file that
    binds a token to no institution, or to one it only folds to, is refused whole."""
    problem: str | None
    if network is None:
        problem = "the token is bound to an institution, but no network was loaded"
    else:
        problem = exact_key_problem(key, network)
    if problem is not None:
        raise ConfigError("bad-token-role", f"{where}: {problem}")


class TokenSet:
    """The API's tokens. ``lines`` as in the token file: ``TOKEN [ROLE [NAME
    [INSTITUTION]]]``; ``network`` checks the institutions named."""

    def __init__(
        self, lines: Iterable[str], source: Path | None = None, network: Network | None = None
    ) -> None:
        parsed = []
        for number, line in enumerate(lines, 1):
            text = line.strip()
            if text and not text.startswith("#"):
                parsed.append(_parse(text, number, source, network))
        if not parsed:
            raise ConfigError("no-tokens", f"no API tokens in {source or 'configuration'}")
        self._tokens = parsed
        self.source = source

    def identify(self, presented: str) -> Principal | None:
        """The principal of a presented token, or None."""
        given = presented.encode()
        # compare_digest on every token: timing does not reveal which one matched
        matches = [hmac.compare_digest(given, t) for t, _ in self._tokens]
        return next((p for (_, p), hit in zip(self._tokens, matches, strict=True) if hit), None)

    def check(self, presented: str) -> bool:
        return self.identify(presented) is not None

    def authorize(self, authorization: str, path: str) -> Principal:
        """The principal of an ``Authorization`` header allowed on ``path``; else
        AccessDenied: 401 without a valid token, 403 when its role may not."""
        scheme, _, token = authorization.partition(" ")
        found = self.identify(token.strip()) if scheme.lower() == "bearer" else None
        if found is None:
            issue = Issue(
                "security.unauthorized",
                "a valid Bearer token is required",
                details={"issue_type": "login"},
            )
            raise AccessDenied(401, issue)
        needed = permission_for(path)
        if not found.may(needed):
            what = "the audit log" if needed == "audit" else "this route (audit log only)"
            issue = Issue(
                "security.forbidden",
                f"the token's role ({found.role}) may not use {what}",
                details={"issue_type": "forbidden"},
            )
            raise AccessDenied(403, issue)
        if found.institution is not None and not path.startswith(BOUND_PREFIX):
            raise AccessDenied(403, _bound_elsewhere(found.institution))
        return found


def _bound_elsewhere(institution: str) -> Issue:
    """A bound token off STOW-RS: every other route (POST /convert, ``$reprocess``, FHIR
    writes) takes records without the sender check, so a PACS's token there could file
    another institution's study under that institution's numbers."""
    return Issue(
        "security.forbidden",
        f"the token is bound to institution {institution}: it may use only STOW-RS "
        f"({BOUND_PREFIX}...), where its studies are checked against that institution",
        details={"issue_type": "forbidden"},
    )


def load_tokens(settings: Settings) -> TokenSet:
    path = settings.effective_token_file
    if not path.exists():
        if settings.api_token_file is not None:
            raise ConfigError("no-tokens", f"api_token_file {path} does not exist")
        private_folder(path.parent)  # $GATEWAY_HOME/secrets: 0700
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")  # no role: operator
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("no-tokens", f"cannot read {path}: {exc.strerror}") from None
    # As the pseudonym and signing keys: a token file others on the host can read is
    # refused, not used (anyone who read it could call the API, or read the audit log)
    problem = not_private(path, mode, "API token file")
    if problem is not None:
        raise ConfigError("no-tokens", problem)
    return TokenSet(lines, path, Network.load(settings.network))
