"""Who is sending: partner authentication for the inbound endpoint (docs/inbound.md).

Three ways, each ending in one institution key of the network:

* **static bearer tokens** per partner, in ``$GATEWAY_HOME/secrets/partner-tokens``
  (``inbound_token_file``): one ``<institution key> <token>`` per line. Never the local
  users' API tokens (``api-tokens``): those are for local systems.
* **SMART Backend Services** (client credentials with a private-key JWT): ``POST
  /auth/token`` takes a ``client_assertion`` signed by the partner's signing key with its
  certificate chain in ``x5c``, verified against the gateway's signing trust store; the
  certificate must be the institution's own (its ``organizationIdentifier`` the OID of
  ``client_id``'s institution). The answer is a short-lived opaque access token, kept
  only as its SHA-256, bound to that partner and the granted scope.
* **mutual TLS, at a reverse proxy**: uvicorn does not hand the client certificate to
  the application, so TLS is terminated by a proxy that verifies it and passes it (URL-
  encoded PEM) in ``inbound_mtls_header``; the header is read only on connections from
  ``inbound_mtls_proxies`` (the TCP peer, not a forwarded address; off by default) and
  the certificate is checked again here.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from base64 import b64decode
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

from ..config import SECRET_FILES, Settings, not_private
from ..errors import nul_message
from ..network import Institution, Network, certificate_institution, exact_key_problem

# the chain, validity, CRL and key-usage checks signatures get
from ..signing import SignatureReport, TrustStore, check_certificate
from ..store import Store, utcnow
from ._errors import InboundError
from ._schema import jtis, tokens
from ._trust import TrustCache

__all__ = [
    "ASSERTION_TYPE",
    "SIGNING_ALGS",
    "Authenticator",
    "PartnerAuth",
    "TokenError",
    "certificate_institution",
    "load_partner_tokens",
    "partner_line",
]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services names RS384 and ES384; the gateway's own keys are ES256, ES384, EdDSA
# and PS256 (gateway keys init). Never none, never HMAC.
SIGNING_ALGS = ("ES256", "ES384", "RS384", "PS256", "EdDSA")
MAX_ASSERTION_LIFETIME = timedelta(minutes=5)
CLOCK_SKEW = timedelta(seconds=30)
# The header carries the x5c chain (two certificates with Chinese subjects: ~2 KiB of
# base64): joserfc's default 512-byte header limit is for headers without one.
_REGISTRY = jws.JWSRegistry(algorithms=list(SIGNING_ALGS))
_REGISTRY.max_header_length = 16 * 1024
_SCOPE = re.compile(r"system/(\*|[A-Z][A-Za-z]+)\.(read|write|[cruds]+)")
_PARTNER_LINE = re.compile(r"(\S+)\s+(\S+)")


@dataclass(frozen=True, slots=True)
class PartnerAuth:
    """An authenticated partner: its institution key, how it proved it, what it may do."""

    partner: str
    method: str  # bearer | smart | mtls
    scopes: frozenset[str] = frozenset({"system/*.read", "system/*.write"})

    def may(self, action: str, resource_type: str = "*") -> bool:
        """``action`` read or write on ``resource_type`` under the granted scopes."""
        for scope in self.scopes:
            m = _SCOPE.fullmatch(scope)
            if m is None or m.group(1) not in ("*", resource_type):
                continue
            perm = m.group(2)
            if perm == action:
                return True
            letters = "rs" if action == "read" else "cud"
            if perm not in ("read", "write") and any(c in perm for c in letters):
                return True
        return False


class TokenError(Exception):
    """An OAuth 2.0 error answer of the token endpoint (RFC 6749 5.2)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def load_partner_tokens(path: Path, network: Network) -> dict[str, str]:
    """token → institution key, from ``<institution key> <token>`` lines (# comments).
    A file group or others may read or write is refused, not used, as ``gateway serve``
    refuses it at start-up (in the same words): it was read at every change, so one
    made readable after start-up (or behind an app not started by ``serve``) was used,
    and anyone on the host who read it could send as any partner."""
    out: dict[str, str] = {}
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    except OSError as exc:
        raise InboundError(
            "inbound.config", f"cannot read the partner token file {path}: {exc.strerror}"
        ) from None
    problem = not_private(path, mode, SECRET_FILES["inbound_token_file"])
    if problem is not None:  # a gateway fault (500), as an unreadable file: not the partner's
        raise InboundError("inbound.config", f"inbound_token_file: {problem}")
    for n, line in enumerate(lines, 1):
        entry = _partner_entry(line, network, f"{path} line {n}")
        if entry is not None:
            out[entry[0]] = entry[1]
    return out


def partner_line(key: str, token: str, network: Network) -> str:
    """The token file's line giving ``token`` to the institution ``key`` (its key as
    the network writes it), once the rule that reads the file reads it back as that:
    a key with white space in it would make the whole file refused (every partner
    answered 500), one starting with '#' a comment (the token never works)."""
    try:
        read = _partner_entry(f"{key} {token}", network, f"institution key {key!r}")
    except InboundError:
        read = None
    if read != (token, key):
        raise InboundError(
            "inbound.config",
            f"institution key {key!r} cannot be written to the partner token file: its "
            "'<institution key> <token>' lines do not read back a key with white space in "
            "it or a leading '#'; give the institution a plain key in the network file",
        )
    return f"{key} {token}"


def _partner_entry(line: str, network: Network, where: str) -> tuple[str, str] | None:
    """(token, institution key) of one line of the token file; None for a blank line or
    a comment."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    m = _PARTNER_LINE.fullmatch(text)
    if m is None or network.institution(m.group(1)) is None or len(m.group(2)) < 16:
        raise InboundError(
            "inbound.config",
            f"{where}: expected '<institution key> <token>' with a network "
            "institution and a token of at least 16 characters",
        )
    return m.group(2), _exact_key(m.group(1), network, where)


def _exact_key(key: str, network: Network, where: str) -> str:
    """``key`` when it is an institution's key exactly as the network file writes it
    (``exact_key_problem``)."""
    problem = exact_key_problem(key, network)
    if problem is not None:
        raise InboundError("inbound.config", f"{where}: {problem}")
    return key


def _public_jwk(cert: x509.Certificate) -> Any:
    key = cert.public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(pem)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(pem)
    return None


def _verify_chain(chain: list[x509.Certificate], trust: TrustStore, now: datetime) -> str | None:
    """Why the chain is not trusted now (chain, validity, CRL, key usage), else None."""
    report = SignatureReport(1)
    check_certificate(report, tuple(chain), now.replace(tzinfo=UTC), trust)
    failed = [c for c in report.checks if not c.ok]
    return failed[0].message.split(": ", 2)[-1] if failed else None


class Authenticator:
    """Partner credentials for one gateway: the static tokens (re-read when the file
    changes), the SMART token endpoint and its access tokens, the proxy's certificate
    header. Thread-safe."""

    def __init__(self, settings: Settings, store: Store, network: Network) -> None:
        self.settings = settings
        self.store = store
        self.network = network
        self.token_file = settings.inbound_token_file or settings.secrets_dir / "partner-tokens"
        self._static: dict[str, str] = {}
        self._stamp: tuple[float, int] | None = None
        self._lock = threading.Lock()
        self._trust = TrustCache(settings)

    # -- trust ------------------------------------------------------------------------
    def trust(self) -> TrustStore | None:
        """The trust store as on disk now (a changed CRL or CA takes effect at once)."""
        return self._trust.trust()

    # -- requests ---------------------------------------------------------------------
    def authenticate(self, authorization: str, client_host: str | None, cert_header: str | None
                     ) -> PartnerAuth:  # fmt: skip
        """The partner behind a request, or InboundError ``inbound.unauthorized``."""
        if cert_header and self._from_proxy(client_host):
            return PartnerAuth(self._mtls_partner(cert_header), "mtls")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise InboundError(
                "inbound.unauthorized",
                "partner credentials are required: a partner Bearer token, a SMART access "
                "token (POST /auth/token) or a client certificate (at the TLS proxy)",
                issue_type="login",
            )
        partner = self._static_partner(token)
        if partner is not None:
            return PartnerAuth(partner, "bearer")
        found = self._access_token(token)
        if found is not None:
            return found
        raise InboundError(
            "inbound.unauthorized",
            "the Bearer token is not a partner token nor a current access token",
            issue_type="login",
        )

    def _from_proxy(self, client_host: str | None) -> bool:
        """Whether the connection is the TLS proxy's: ``client_host`` must be the TCP
        peer (``gateway.api._server.tcp_peer``), never an address from X-Forwarded-For,
        which any peer trusted in ``forwarded_allow_ips`` could set to the proxy's."""
        return bool(self.settings.inbound_mtls_header) and client_host in set(
            self.settings.inbound_mtls_proxies
        )

    def _static_partner(self, token: str) -> str | None:
        table = self._tokens()
        given = token.encode()
        match = None
        for known, partner in table.items():  # every one compared: timing says nothing
            if hmac.compare_digest(given, known.encode()):
                match = partner
        return match

    def _tokens(self) -> dict[str, str]:
        try:  # its mode too: a file made readable to others is refused at once
            found = self.token_file.stat()
            stamp: tuple[float, int] | None = (found.st_mtime, found.st_mode)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._static = load_partner_tokens(self.token_file, self.network)
                self._stamp = stamp
            return self._static

    def _access_token(self, token: str) -> PartnerAuth | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(tokens.c.partner, tokens.c.scope).where(
                    tokens.c.token_hash == digest, tokens.c.expires_at > utcnow()
                )
            ).first()
        if row is None:
            return None
        return PartnerAuth(row.partner, "smart", frozenset(str(row.scope).split()))

    def _mtls_partner(self, header: str) -> str:
        try:
            chain = x509.load_pem_x509_certificates(unquote(header).encode())
        except ValueError:
            raise InboundError(
                "inbound.unauthorized",
                f"the TLS proxy's {self.settings.inbound_mtls_header} header holds no PEM "
                "certificate",
                issue_type="login",
            ) from None
        trust = self.trust()
        why = _verify_chain(chain, trust, utcnow()) if trust is not None else "no trust store"
        inst = certificate_institution(chain[0], self.network) if chain else None
        if why is not None or inst is None:
            raise InboundError(
                "inbound.unauthorized",
                "the client certificate is not an institution certificate trusted by "
                f"signing_trust ({why or 'it names no institution of the network'})",
                issue_type="login",
            )
        return inst.key

    # -- the SMART token endpoint -----------------------------------------------------
    def issue(self, form: dict[str, str], token_url: str | None) -> dict[str, Any]:
        """``POST /auth/token`` (client_credentials + private_key_jwt): the access token
        answer, or TokenError. ``token_url``: this endpoint's public URL, the one
        audience an assertion may name (``inbound_public_url``); None refuses them all."""
        if form.get("grant_type") != "client_credentials":
            raise TokenError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            raise TokenError(
                "invalid_request",
                f"client_assertion_type must be {ASSERTION_TYPE}, with a client_assertion",
            )
        scopes = self._scopes(form.get("scope", ""))
        if token_url is None:
            # never the request's Host: a partner holding another's assertion (made for
            # its own token URL) would name that host and replay it here
            raise TokenError(
                "invalid_client",
                "SMART Backend Services is off on this gateway: inbound_public_url (the "
                "URL partners reach it at, whose /auth/token an assertion's aud names) is "
                "not set",
                401,
            )
        now = utcnow()
        partner, jti, exp = self._assertion(form["client_assertion"], token_url, now)
        if form.get("client_id") not in (None, "", partner):
            raise TokenError("invalid_client", "client_id is not the assertion's iss", 401)
        token = secrets.token_urlsafe(32)
        lifetime = timedelta(seconds=self.settings.inbound_token_seconds)
        try:
            with self.store.engine.execution_options(write=True).begin() as conn:
                conn.execute(jtis.delete().where(jtis.c.expires_at < now - CLOCK_SKEW))
                conn.execute(tokens.delete().where(tokens.c.expires_at < now))
                conn.execute(jtis.insert().values(issuer=partner, jti=jti, expires_at=exp))
                conn.execute(
                    tokens.insert().values(
                        token_hash=hashlib.sha256(token.encode()).hexdigest(),
                        partner=partner,
                        scope=" ".join(scopes),
                        issued_at=now,
                        expires_at=now + lifetime,
                    )
                )
        except sa.exc.IntegrityError:
            raise TokenError(
                "invalid_client", "the client_assertion's jti was already used", 401
            ) from None
        return {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": int(lifetime.total_seconds()),
            "scope": " ".join(scopes),
        }

    @staticmethod
    def _scopes(requested: str) -> list[str]:
        granted = [s for s in requested.split() if _SCOPE.fullmatch(s)]
        if not granted:
            raise TokenError(
                "invalid_scope",
                "scope must name system scopes, e.g. 'system/*.write system/*.read' "
                "(SMART v1) or 'system/*.cruds' (v2)",
            )
        return granted

    def _assertion(
        self, assertion: str, token_url: str, now: datetime
    ) -> tuple[str, str, datetime]:
        """Verify the client assertion: (institution key, jti, expiry)."""
        try:
            header = jws.extract_compact(assertion.encode(), registry=_REGISTRY).headers()
        except (JoseError, ValueError):
            raise TokenError(
                "invalid_client", "client_assertion is not a compact JWS", 401
            ) from None
        alg = header.get("alg")
        if alg not in SIGNING_ALGS:
            raise TokenError(
                "invalid_client",
                f"client_assertion alg must be one of {', '.join(SIGNING_ALGS)}",
                401,
            )
        chain = _chain(header.get("x5c"))
        key = _public_jwk(chain[0])
        if key is None:
            raise TokenError("invalid_client", "the x5c certificate's key type is not usable", 401)
        try:
            claims = jwt.decode(assertion, key, algorithms=[str(alg)], registry=_REGISTRY).claims
        except (JoseError, ValueError):
            raise TokenError(
                "invalid_client",
                "client_assertion signature does not verify with the x5c certificate",
                401,
            ) from None
        client = self._claims(claims, token_url, now)
        trust = self.trust()
        if trust is None:
            raise TokenError(
                "invalid_client", "the gateway has no trust store (signing_trust)", 401
            )
        why = _verify_chain(chain, trust, now)
        if why is not None:
            raise TokenError("invalid_client", f"the x5c certificate is not trusted: {why}", 401)
        inst = certificate_institution(chain[0], self.network)
        if inst is None or inst.key != client.key:
            raise TokenError(
                "invalid_client",
                f"the x5c certificate is not the certificate of institution {client.key!r} "
                "(its organizationIdentifier names another, or it is a person's)",
                401,
            )
        return client.key, str(claims["jti"]), _utc(claims["exp"])

    def _claims(self, claims: dict[str, Any], token_url: str, now: datetime) -> Institution:
        iss, sub = claims.get("iss"), claims.get("sub")
        if not isinstance(iss, str) or iss != sub:
            raise TokenError("invalid_client", "iss and sub must both be the client_id", 401)
        inst = self.network.institution(iss)
        if inst is None or inst.key != iss:
            raise TokenError("invalid_client", "iss is not an institution key of the network", 401)
        aud = claims.get("aud")
        if not (aud == token_url or (isinstance(aud, list) and token_url in aud)):
            raise TokenError("invalid_client", f"aud must be the token URL {token_url}", 401)
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise TokenError("invalid_client", "exp is required (a number of seconds)", 401)
        expires = _utc(exp)
        if expires <= now - CLOCK_SKEW:
            raise TokenError("invalid_client", "the client_assertion has expired", 401)
        if expires > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise TokenError("invalid_client", "exp is more than 5 minutes ahead", 401)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            raise TokenError("invalid_client", "jti is required (at most 255 characters)", 401)
        if "\0" in jti:  # kept against replays: PostgreSQL's text holds no NUL (a 500)
            raise TokenError("invalid_client", nul_message("the jti"), 401)
        return inst


def _utc(seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(int(seconds), UTC).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):  # beyond the calendar: no real expiry
        raise TokenError("invalid_client", "exp is not a time the gateway can read", 401) from None


def _chain(x5c: Any) -> list[x509.Certificate]:
    if not isinstance(x5c, list) or not x5c or not all(isinstance(c, str) for c in x5c):
        raise TokenError("invalid_client", "the JWS header needs x5c: the certificate chain", 401)
    try:
        return [x509.load_der_x509_certificate(b64decode(c, validate=True)) for c in x5c]
    except ValueError:
        raise TokenError(
            "invalid_client", "x5c holds a certificate that cannot be read", 401
        ) from None
