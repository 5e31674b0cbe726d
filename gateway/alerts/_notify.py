"""Sending alert notices: a webhook (an HTTP POST of the notice as JSON, optionally with
a bearer token read from a file) and e-mail (smtplib to the configured SMTP host,
STARTTLS unless switched off, the password from ``GATEWAY_ALERT_SMTP_PASSWORD`` or a file).
Each channel tries a few times with exponential backoff; a failure is logged with the
channel, the partner and the kind of alert, never more (an alert holds no patient data,
and the webhook URL's path and query may hold a secret: only its host is logged)."""

from __future__ import annotations

import logging
import os
import smtplib
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from ..config import SECRET_FILES, Settings, not_private
from ..errors import ConfigError, GatewayError
from ..logs import safe_traceback
from ._evaluate import Notice
from ._labels import LANGUAGES

__all__ = [
    "PASSWORD_ENV",
    "AlertError",
    "Channel",
    "EmailChannel",
    "Notifier",
    "WebhookChannel",
    "notifier_from",
]

log = logging.getLogger("gateway.alerts")
PASSWORD_ENV = "GATEWAY_ALERT_SMTP_PASSWORD"
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class AlertError(GatewayError):
    """A notice no channel could deliver, or a notification asked for with none set."""

    family = "alert"


class Channel(Protocol):
    name: str

    def send(self, notice: Notice) -> None:
        """Deliver one notice or raise :class:`AlertError` (after its own retries)."""


class _Retry(Exception):
    """A failure worth another attempt (no answer, or a 5xx/408/429)."""


def _attempts(
    channel: str,
    attempts: int,
    backoff: float,
    what: Callable[[], None],
    sleep: Callable[[float], None],
) -> None:
    last = ""
    for attempt in range(1, attempts + 1):
        try:
            what()
            return
        except _Retry as exc:
            last = str(exc)
            log.warning(
                "alert.notify-failed: %s: %s (attempt %d of %d)",
                channel, last, attempt, attempts, extra={"code": "alert.notify-failed"},
            )  # fmt: skip
        if attempt < attempts:
            sleep(backoff * 2 ** (attempt - 1))
    raise AlertError("alert.notify-failed", f"{channel}: {last} after {attempts} attempts")


def _first_line(path: Path, setting: str) -> str:
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("bad-setting", f"{setting}: cannot read {path}: {exc.strerror}") from None
    # As the API token file and the keys: a secret others on the host may read is
    # refused, not used (checked at every read: a file opened up since is refused too)
    problem = not_private(path, mode, SECRET_FILES.get(setting, setting))
    if problem is not None:
        raise ConfigError("bad-setting", f"{setting}: {problem}")
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#"):
            return line.strip()
    raise ConfigError("bad-setting", f"{setting}: {path} holds no value")


@dataclass
class WebhookChannel:
    url: str
    token_file: Path | None = None
    attempts: int = 3
    backoff: float = 1.0  # seconds before the second attempt; doubled each time
    timeout: float = 10.0
    transport: httpx.BaseTransport | None = None  # tests: a mocked transport
    sleep: Callable[[float], None] = time.sleep
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"webhook {urlsplit(self.url).netloc}"

    def send(self, notice: Notice) -> None:
        headers = {"Content-Type": "application/json"}
        if self.token_file is not None:  # read every time: a rotated token is used at once
            token = _first_line(self.token_file, "alert_webhook_token_file")
            headers["Authorization"] = f"Bearer {token}"
        body = orjson.dumps(notice.to_json())

        def post() -> None:
            with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
                try:
                    answer = client.post(self.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    raise _Retry(type(exc).__name__) from None
            if answer.status_code in _RETRY_STATUS:
                raise _Retry(f"HTTP {answer.status_code}")
            if not answer.is_success:
                raise AlertError(
                    "alert.notify-failed", f"{self.name}: HTTP {answer.status_code} (not retried)"
                )

        _attempts(self.name, self.attempts, self.backoff, post, self.sleep)


@dataclass
class EmailChannel:
    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = True
    user: str | None = None
    password_file: Path | None = None
    attempts: int = 3
    backoff: float = 1.0
    timeout: float = 10.0
    tls_context: ssl.SSLContext | None = None  # None: the system's CAs
    sleep: Callable[[float], None] = time.sleep
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"e-mail {self.host}:{self.port}"

    def password(self) -> str | None:
        if self.user is None:
            return None
        if os.environ.get(PASSWORD_ENV):
            return os.environ[PASSWORD_ENV]
        if self.password_file is not None:
            return _first_line(self.password_file, "alert_smtp_password_file")
        raise ConfigError(
            "bad-setting",
            f"alert_smtp_user is set: give the password in {PASSWORD_ENV} "
            "or alert_smtp_password_file",
        )

    def message(self, notice: Notice) -> EmailMessage:
        titles = notice.alert.titles
        msg = EmailMessage()
        msg["Subject"] = " / ".join(dict.fromkeys(titles[lang] for lang in LANGUAGES))
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        data = notice.to_json()
        facts = [
            f"{key}: {data[key]}"
            for key in ("event", "partner", "kind", "severity", "value", "threshold",
                        "firing_since", "resolved_at", "at", "gateway")
            if data.get(key) is not None
        ]  # fmt: skip
        texts = [notice.alert.texts[lang] for lang in LANGUAGES]
        msg.set_content("\n\n".join(["\n".join(texts), "\n".join(facts)]) + "\n")
        return msg

    def send(self, notice: Notice) -> None:
        message = self.message(notice)
        password = self.password()

        def deliver() -> None:
            try:
                with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                    if self.starttls:
                        smtp.starttls(context=self.tls_context or ssl.create_default_context())
                    if self.user is not None and password is not None:
                        smtp.login(self.user, password)
                    smtp.send_message(message)
            except smtplib.SMTPAuthenticationError as exc:
                raise AlertError(
                    "alert.notify-failed", f"{self.name}: login refused ({exc.smtp_code})"
                ) from None
            except smtplib.SMTPResponseException as exc:
                if 400 <= exc.smtp_code < 500:  # transient: try again
                    raise _Retry(f"SMTP {exc.smtp_code}") from None
                raise AlertError(
                    "alert.notify-failed", f"{self.name}: SMTP {exc.smtp_code} (not retried)"
                ) from None
            except (smtplib.SMTPException, OSError) as exc:
                raise _Retry(type(exc).__name__) from None

        _attempts(self.name, self.attempts, self.backoff, deliver, self.sleep)


class Notifier:
    """Every configured channel. ``send`` is True when at least one channel took the
    notice, or none is configured (the alert still shows in the console and the CLI)."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = list(channels)

    def send(self, notice: Notice) -> bool:
        if not self.channels:
            return True
        delivered = False
        for channel in self.channels:
            try:
                channel.send(notice)
                delivered = True
            except GatewayError as exc:
                log.warning(
                    "%s: %s %s %s not notified: %s",
                    exc.issue.code, notice.event, notice.alert.partner, notice.alert.kind,
                    exc.issue.message, extra={"code": exc.issue.code},
                )  # fmt: skip
            except Exception as exc:  # a fault of a channel: the others still send
                log.error(
                    "%s %s %s not notified by %s: %s",
                    notice.event, notice.alert.partner, notice.alert.kind, channel.name,
                    type(exc).__name__,
                    extra={"code": "internal", "traceback": safe_traceback(exc)},
                )  # fmt: skip
        return delivered

    def test(self, notice: Notice) -> list[tuple[str, str | None]]:
        """Send ``notice`` to each channel: (channel, None or the error line)."""
        if not self.channels:
            raise AlertError(
                "alert.no-channel",
                "no alert channel is configured: set alert_webhook_url, or alert_smtp_host "
                "with alert_email_from and alert_email_to (docs/alerts.md)",
            )
        out: list[tuple[str, str | None]] = []
        for channel in self.channels:
            try:
                channel.send(notice)
                out.append((channel.name, None))
            except GatewayError as exc:
                out.append((channel.name, exc.issue.line()))
        return out


def _tls(ca_file: Path | None) -> ssl.SSLContext | None:
    if ca_file is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "bad-setting", f"alert_smtp_ca_file: cannot load {ca_file}: {type(exc).__name__}"
        ) from None


def notifier_from(settings: Settings) -> Notifier:
    """The channels the settings configure."""
    channels: list[Channel] = []
    if settings.alert_webhook_url:
        channels.append(
            WebhookChannel(settings.alert_webhook_url, settings.alert_webhook_token_file)
        )
    if settings.alert_smtp_host:
        if not settings.alert_email_from or not settings.alert_email_to:
            raise ConfigError(
                "bad-setting",
                "alert_smtp_host is set: alert_email_from and alert_email_to are needed too",
            )
        channels.append(
            EmailChannel(
                settings.alert_smtp_host,
                settings.alert_smtp_port,
                settings.alert_email_from,
                settings.alert_email_to,
                starttls=settings.alert_smtp_starttls,
                user=settings.alert_smtp_user,
                password_file=settings.alert_smtp_password_file,
                tls_context=_tls(settings.alert_smtp_ca_file),
            )
        )
    return Notifier(channels)
