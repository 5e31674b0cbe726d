"""Outbound authentication: the pooled httpx client for a partner, its auth attached.

``partner_client(partner, settings)`` is what delivery (and ``partners check``) send
with. Auth is an :class:`httpx.Auth` per partner:

* ``bearer``: ``Authorization: Bearer`` from a token file (read again whenever the file
  changes, so a rotated token is used at once) or an environment variable;
* ``smart``: SMART Backend Services (client-credentials grant, RFC 7523 private-key JWT
  signed with the gateway's own key, its certificate chain in ``x5c``); the access
  token is cached until shortly before it expires, and a 401 from the FHIR server gets
  one new token and one resend of that same request;
* ``mtls``: the client certificate sits on the client's TLS context (no header).

Every flow also keeps the partner's ``rate_limit``. When no token can be had, the flow
raises :class:`PartnerAuthError`: a GatewayError with a ``delivery.*`` code that is also
an :class:`httpx.ConnectError`, because that is what it means for delivery — nothing
reached the FHIR server, a retry (with backoff, breaker) is safe.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc import jwk, jwt

from ..config import Settings, exposed, not_private
from ..errors import ConfigError, GatewayError
from ..signing import Signer, SigningError, folder_signer
from ._config import Auth, Partner

__all__ = [
    "ASSERTION_LIFETIME",
    "ASSERTION_TYPE",
    "BearerAuth",
    "PartnerAuthError",
    "SmartAuth",
    "Throttle",
    "Timeouts",
    "client_assertion",
    "credential_files",
    "exposed_credentials",
    "gateway_signer",
    "jwt_algorithm",
    "partner_auth",
    "partner_client",
    "tls_context",
]

log = logging.getLogger("gateway.partners")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: exp no more than five minutes ahead; a minute less leaves
# room for a token server whose clock runs behind ours.
ASSERTION_LIFETIME = 240
_TOKEN_CHARS = 512  # of a token endpoint's error answer quoted in an error


class PartnerAuthError(GatewayError, httpx.ConnectError):
    """No credentials for a partner request (token file, token endpoint). A ConnectError
    too: the FHIR server was not reached, so delivery retries with backoff."""

    family = "delivery"

    def __init__(self, code: str, message: str, request: httpx.Request | None = None) -> None:
        GatewayError.__init__(self, code, message)
        self._request = request
        # Delivery records only "no connection (PartnerAuthError)": the reason goes to
        # the log (it names files, URLs and OAuth error codes, never a token or key).
        log.warning("%s", self.issue.line())


class Timeouts(Protocol):
    """What delivery's DeliveryConfig has: seconds for each phase of a request."""

    @property
    def connect_timeout(self) -> float: ...
    @property
    def read_timeout(self) -> float: ...
    @property
    def write_timeout(self) -> float: ...
    @property
    def pool_timeout(self) -> float: ...


def partner_client(partner: Partner, settings: Settings | Timeouts) -> httpx.Client:
    """The partner's pooled client: ``base_url`` its FHIR base, timeouts from the
    ``delivery_*`` settings (or a DeliveryConfig), at most ``concurrency`` connections,
    TLS verified against ``ca_file`` (else the system's CAs), its auth attached."""
    if isinstance(settings, Settings):
        timeout = httpx.Timeout(
            connect=settings.delivery_connect_timeout,
            read=settings.delivery_read_timeout,
            write=settings.delivery_write_timeout,
            pool=settings.delivery_pool_timeout,
        )
    else:
        timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=settings.pool_timeout,
        )
    return httpx.Client(
        base_url=partner.base,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=partner.concurrency, max_keepalive_connections=partner.concurrency
        ),
        auth=partner_auth(partner),
        verify=tls_context(partner),
    )


def partner_auth(partner: Partner) -> httpx.Auth:
    """The partner's httpx.Auth: its credentials and its rate limit."""
    throttle = Throttle(partner.rate_limit)
    auth = partner.auth
    if auth.type == "bearer":
        return BearerAuth(partner.key, auth.token_file, auth.token_env, throttle)
    if auth.type == "smart":
        if not auth.client_id:
            raise ConfigError(
                "partner-auth",
                f"partner {partner.key}: smart needs auth.client_id, or the institution setting",
            )
        signer = _lazy_signer(partner.key, auth)
        return SmartAuth(
            partner.key,
            partner.base,
            auth.client_id,
            auth.scope,
            signer,
            throttle,
            token_url=auth.token_url,
        )
    return ThrottledAuth(throttle)  # none, mtls: nothing in the request itself


def tls_context(partner: Partner) -> ssl.SSLContext | bool:
    """The partner's TLS context: its CA file, and for mtls the client certificate."""
    auth = partner.auth
    if partner.ca_file is None and auth.type != "mtls":
        return True
    files = [str(f) for f in (partner.ca_file,) if f is not None]
    try:
        if partner.ca_file is not None:
            context = ssl.create_default_context(cafile=str(partner.ca_file))
        else:
            context = httpx.create_ssl_context()
        if auth.type == "mtls":
            cert, key = _mtls_files(partner.key, auth)
            files += [str(cert), str(key)]
            if problem := exposed(key, "mTLS client key file"):
                raise ConfigError("partner-auth", f"partner {partner.key}: {problem}")
            password = os.environ.get(auth.key_password_env) if auth.key_password_env else None
            if password is None and auth.key_file is None:
                password = os.environ.get("GATEWAY_SIGNING_PASSWORD")
            # "" rather than None: OpenSSL would otherwise prompt on the terminal
            context.load_cert_chain(str(cert), str(key), password or "")
    except OSError as exc:  # ssl.SSLError too; its reason names no key material
        why = exc.strerror or getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(
            "partner-auth",
            f"partner {partner.key}: TLS files {', '.join(files)} cannot be used ({why})",
        ) from None
    return context


def credential_files(partner: Partner) -> tuple[Path, ...]:
    """The files a partner's client reads its credentials from when it is made: the
    bearer token file, the mTLS certificate and key, the CA file. Watched by delivery
    (gateway.datafiles.FileWatch): one replaced makes the pooled client anew."""
    auth = partner.auth
    files = [f for f in (auth.token_file, partner.ca_file) if f is not None]
    if auth.type == "mtls":
        with contextlib.suppress(ConfigError):  # none to watch: making the client says why
            files += _mtls_files(partner.key, auth)
    return tuple(dict.fromkeys(files))


def missing_credentials(partner: Partner) -> list[str]:
    """What a hand-edited partners file names that is not there ("token_file /x"):
    ``partners set`` refuses a missing file, an edit does not, and a bearer token is
    only read at the first send, so the operator would learn of it from a dead record."""
    auth = partner.auth
    named = [("token_file", auth.token_file), ("ca_file", partner.ca_file)]
    if auth.type == "mtls":
        with contextlib.suppress(ConfigError):  # making the client says why
            cert, key = _mtls_files(partner.key, auth)
            named += [("cert_file", cert), ("key_file", key)]
    return [f"{name} {path}" for name, path in named if path is not None and not path.exists()]


def exposed_credentials(partner: Partner) -> list[str]:
    """The partner's secret files that group or others may read or write (the bearer
    token file, the mTLS client key), each as config.not_private says it: refused as
    the API token file and the signing keys are, since whoever reads one can act as the
    gateway towards the partner. A file that is not there is
    :func:`missing_credentials`'s to name."""
    auth = partner.auth
    secrets: list[tuple[Path | None, str]] = [(auth.token_file, "partner token file")]
    if auth.type == "mtls":
        with contextlib.suppress(ConfigError):  # making the client says why
            secrets.append((_mtls_files(partner.key, auth)[1], "mTLS client key file"))
    return [problem for path, what in secrets if path and (problem := exposed(path, what))]


def _mtls_files(partner: str, auth: Auth) -> tuple[Path, Path]:
    if auth.cert_file is not None and auth.key_file is not None:
        return auth.cert_file, auth.key_file
    if auth.signing_keys is None or not auth.key or auth.key.startswith("env:"):
        raise ConfigError(
            "partner-auth",
            f"partner {partner}: mtls needs cert_file and key_file, or signing_keys and the "
            "institution setting (its key folder holds cert.pem and key.pem)",
        )
    folder = auth.signing_keys / auth.key
    return folder / "cert.pem", folder / "key.pem"


# --- the flows ---------------------------------------------------------------------------


class Throttle:
    """At most ``rate`` requests a second (0: no limit), spaced evenly; shared by the
    threads of one partner's client. ``clock`` and ``sleep`` are for tests."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self.clock()
            start = max(now, self._next)
            self._next = start + 1.0 / self.rate
        if start > now:
            self.sleep(start - now)


class ThrottledAuth(httpx.Auth):
    """No credentials in the request (none, mtls); the rate limit only."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.throttle.wait()
        yield request


class BearerAuth(ThrottledAuth):
    """``Authorization: Bearer`` from ``token_file`` (its first line that is not empty
    nor a ``#`` comment; read again when its size or time changes) or ``token_env``.
    After a 401 the file is read again and, if the token changed, the request sent
    once more."""

    def __init__(
        self, partner: str, token_file: Path | None, token_env: str | None, throttle: Throttle
    ) -> None:
        super().__init__(throttle)
        self.partner, self.token_file, self.token_env = partner, token_file, token_env
        self._seen: tuple[int, int] | None = None
        self._token: str | None = None
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.throttle.wait()
        token = self.token(request)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            fresh = self.token(request, again=True)
            if fresh != token:
                request.headers["Authorization"] = f"Bearer {fresh}"
                self.throttle.wait()
                yield request

    def token(self, request: httpx.Request | None = None, *, again: bool = False) -> str:
        if self.token_env is not None:
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise PartnerAuthError(
                    "delivery.token-file",
                    f"partner {self.partner}: environment variable {self.token_env} holds no token",
                    request,
                )
            return value
        assert self.token_file is not None  # the configuration requires one of them
        with self._lock:
            try:
                stat = self.token_file.stat()
                # checked at every request: a file made readable to others since is
                # refused at once (config.not_private), as at start-up
                problem = not_private(self.token_file, stat.st_mode, "partner token file")
                if problem is not None:
                    self._token = None
                    raise PartnerAuthError(
                        "delivery.token-file", f"partner {self.partner}: {problem}", request
                    )
                seen = (stat.st_mtime_ns, stat.st_size)
                if again or seen != self._seen or self._token is None:
                    self._token = _first_line(self.token_file.read_text(encoding="utf-8"))
                    self._seen = seen
            except (OSError, UnicodeDecodeError) as exc:
                self._token = None
                raise PartnerAuthError(
                    "delivery.token-file",
                    f"partner {self.partner}: cannot read token file {self.token_file} "
                    f"({getattr(exc, 'strerror', None) or type(exc).__name__})",
                    request,
                ) from None
            if not self._token:
                raise PartnerAuthError(
                    "delivery.token-file",
                    f"partner {self.partner}: token file {self.token_file} holds no token",
                    request,
                )
            return self._token


def _first_line(text: str) -> str | None:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return None


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # clock() after which a new one is fetched
    expires_in: float


class SmartAuth(ThrottledAuth):
    """SMART Backend Services (hl7.org/fhir/smart-app-launch/backend-services.html):
    the client-credentials grant with a private-key JWT client assertion (RFC 7523).
    The token URL is the configured one, else the ``token_endpoint`` of
    ``{base}/.well-known/smart-configuration`` (asked once)."""

    requires_request_body = True  # a 401 resends the same request
    requires_response_body = True  # the token endpoint's answer is read in the flow

    def __init__(
        self,
        partner: str,
        base: str,
        client_id: str,
        scope: str,
        signer: Callable[[], Signer],
        throttle: Throttle,
        *,
        token_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(throttle)
        self.partner, self.base, self.client_id, self.scope = partner, base, client_id, scope
        self.signer, self.token_url, self.clock = signer, token_url, clock
        self._token: _Token | None = None
        self._lock = threading.Lock()

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.throttle.wait()
        token = self._cached()
        if token is None:
            token = yield from self._fetch(request)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # The server no longer takes it (revoked, its clock ahead): one new token,
            # one resend of this request (a 401 applied nothing).
            self._drop(token)
            token = yield from self._fetch(request)
            request.headers["Authorization"] = f"Bearer {token}"
            self.throttle.wait()
            yield request

    def token(self, client: httpx.Client) -> tuple[str, float]:
        """A token and its lifetime in seconds, fetched now with ``client`` (for
        ``partners check``)."""
        flow = self._fetch(httpx.Request("GET", self.base))
        try:
            request = next(flow)
            while True:
                request = flow.send(client.send(request, auth=None))
        except StopIteration as done:
            value = str(done.value)
        cached = self._token
        return value, cached.expires_in if cached else 0.0

    def _cached(self) -> str | None:
        with self._lock:
            token = self._token
            if token is not None and self.clock() < token.renew_at:
                return token.value
            return None

    def _drop(self, value: str) -> None:
        with self._lock:
            if self._token is not None and self._token.value == value:
                self._token = None

    def _fetch(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, str]:
        url = self.token_url
        if url is None:
            answer = yield httpx.Request(
                "GET",
                f"{self.base}/.well-known/smart-configuration",
                headers={"Accept": "application/json"},
            )
            url = self._discovered(answer, request)
        try:
            signer = self.signer()
        except GatewayError as exc:
            raise PartnerAuthError(
                "delivery.token-endpoint",
                f"partner {self.partner}: no key to sign the client assertion: {exc.issue.message}",
                request,
            ) from None
        assertion = client_assertion(signer, self.client_id, url, self.clock())
        answer = yield httpx.Request(
            "POST",
            url,
            data={
                "grant_type": "client_credentials",
                "scope": self.scope,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
            headers={"Accept": "application/json"},
        )
        return self._accept(answer, url, request)

    def _discovered(self, answer: httpx.Response, request: httpx.Request) -> str:
        found = _json(answer).get("token_endpoint") if answer.status_code == 200 else None
        if not isinstance(found, str) or not found.startswith(("https://", "http://")):
            why = f"HTTP {answer.status_code}" if answer.status_code != 200 else "no token_endpoint"
            raise PartnerAuthError(
                "delivery.token-endpoint",
                f"partner {self.partner}: {self.base}/.well-known/smart-configuration gives "
                f"no token URL ({why}); set auth.token_url",
                request,
            )
        self.token_url = found
        return found

    def _accept(self, answer: httpx.Response, url: str, request: httpx.Request) -> str:
        body = _json(answer)
        if answer.status_code != 200:
            error = body.get("error")
            detail = f"HTTP {answer.status_code}" + (f" {error}" if isinstance(error, str) else "")
            described = body.get("error_description")
            if isinstance(described, str):
                detail += f": {described[:200]}"
            raise PartnerAuthError(
                "delivery.token-endpoint",
                f"partner {self.partner}: the token endpoint {url} refused the client "
                f"assertion ({detail})",
                request,
            )
        value = body.get("access_token")
        kind = str(body.get("token_type") or "bearer").lower()
        lifetime = body.get("expires_in", 300)
        if not isinstance(value, str) or not value or kind != "bearer":
            raise PartnerAuthError(
                "delivery.token-endpoint",
                f"partner {self.partner}: the token endpoint {url} answered 200 without a "
                "bearer access_token",
                request,
            )
        if isinstance(lifetime, bool) or not isinstance(lifetime, (int, float)) or lifetime <= 0:
            lifetime = 300
        # Renewed shortly before it runs out: a tenth of its life, at most a minute.
        renew_at = self.clock() + lifetime - min(60.0, lifetime / 10)
        with self._lock:
            self._token = _Token(value, renew_at, float(lifetime))
        return value


def _json(answer: httpx.Response) -> dict[str, Any]:
    try:
        found = orjson.loads(answer.content[: 1 << 20])
    except orjson.JSONDecodeError:
        return {}
    return found if isinstance(found, dict) else {}


# --- the client assertion -----------------------------------------------------------------


def jwt_algorithm(key: Any) -> str:
    """The JWS algorithm of a client assertion signed with ``key``: RS384 and ES384, the
    two SMART Backend Services names, for RSA and P-384 keys; otherwise the key's own
    (ES256 for the gateway's default P-256 keys, ES512, Ed25519)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        by_curve = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        if key.curve.name in by_curve:
            return by_curve[key.curve.name]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519"  # RFC 9864's name (EdDSA is deprecated there)
    raise ConfigError(
        "partner-auth", f"a {type(key).__name__} key cannot sign a SMART client assertion"
    )


def client_assertion(signer: Signer, client_id: str, token_url: str, now: float) -> str:
    """The RFC 7523 client assertion: iss = sub = client_id, aud = the token URL, exp
    within five minutes, a unique jti; header kid = the certificate's SHA-256
    thumbprint (base64url), x5c = its chain, leaf first."""
    alg = jwt_algorithm(signer.key)
    header = {"alg": alg, "typ": "JWT", "kid": signer.kid, "x5c": list(signer.x5c)}
    issued = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(header, claims, _jose_key(signer.key), algorithms=[alg])


def _jose_key(key: Any) -> jwk.RSAKey | jwk.ECKey | jwk.OKPKey:
    if isinstance(key, rsa.RSAPrivateKey):
        return jwk.RSAKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return jwk.ECKey.import_key(key)
    return jwk.OKPKey.import_key(key)


def gateway_signer(signing_keys: Path | None, name: str) -> Signer:
    """The gateway's key named as signing_rules name keys: a folder of ``signing_keys``
    (``key.pem`` + ``cert.pem``, or ``key.p12``; password in GATEWAY_SIGNING_PASSWORD) or
    ``env:NAME`` (GATEWAY_SIGNING_KEY_NAME / GATEWAY_SIGNING_CERT_NAME), loaded as every
    signer loads a key folder (signing's ``folder_signer``)."""
    return folder_signer(signing_keys, name, setting="key", code="config.partner-auth")


def _lazy_signer(partner: str, auth: Auth) -> Callable[[], Signer]:
    """Loads the key on first use, then keeps it (in memory only)."""
    held: list[Signer] = []

    def load() -> Signer:
        if not held:
            if not auth.key:
                raise ConfigError(
                    "partner-auth",
                    f"partner {partner}: smart needs auth.key or the institution setting",
                )
            try:
                held.append(gateway_signer(auth.signing_keys, auth.key))
            except SigningError as exc:
                raise ConfigError("partner-auth", exc.issue.message) from None
        return held[0]

    return load
