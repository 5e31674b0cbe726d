"""The channels against real local servers: e-mail to an SMTP server that requires
STARTTLS and a login (aiosmtpd), the webhook's retries and its logged failures."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.alerts import (
    PASSWORD_ENV,
    AlertError,
    Notifier,
    WebhookChannel,
    check,
    notifier_from,
)
from gateway.config import Settings
from gateway.errors import ConfigError
from gateway.store import Store

from .conftest import PATIENT_MRN, PATIENT_NAME, T0, Hook, Mailbox, Queue


def mail_settings(settings: Settings, box: Mailbox, password_file: Path) -> Settings:
    password_file.write_text(box.password + "\n", encoding="utf-8")
    password_file.chmod(0o600)  # a secret: owner-only, or it is refused
    return replace(
        settings,
        alert_smtp_host=box.host,
        alert_smtp_port=box.port,
        alert_smtp_user=box.user,
        alert_smtp_password_file=password_file,
        alert_smtp_ca_file=box.ca_file,
        alert_email_from="gateway@nsch.example.cn",
        alert_email_to=("ops@nsch.example.cn", "oncall@nsch.example.cn"),
    )


def test_one_mail_when_an_alert_fires_and_one_when_it_resolves(
    store: Store,
    queue: Queue,
    settings: Settings,
    mailbox: Mailbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    settings = mail_settings(settings, mailbox, tmp_path / "smtp-password")
    notifier = notifier_from(settings)
    rows = queue.add("hkpmc", 3)
    for minutes in range(3):  # fires once, then stays firing
        check(store, settings, T0 + timedelta(minutes=minutes), notifier)
    queue.move(rows, "delivered")
    for minutes in range(3, 6):
        check(store, settings, T0 + timedelta(minutes=minutes), notifier)

    assert len(mailbox.messages) == 2
    assert mailbox.logins == ["gateway", "gateway"]  # over STARTTLS: the server requires it
    (envelope, fired), (_, resolved) = mailbox.messages
    assert envelope.mail_from == "gateway@nsch.example.cn"
    assert envelope.rcpt_tos == ["ops@nsch.example.cn", "oncall@nsch.example.cn"]
    assert fired["Subject"] == (
        "[FHIR 网关 警告] 大灣區醫療集團香港合作醫療中心：待发送队列"
        " / [FHIR 網關 警告] 大灣區醫療集團香港合作醫療中心：待發送隊列"
        " / [FHIR gateway warning] Greater Bay Area Medical Group Hong Kong Partner Medical"
        " Centre: queue depth"
    )
    body = fired.get_content()
    assert "待发送记录 3 条" in body and "待發送記錄 3 條" in body and "3 records waiting" in body
    assert "event: firing" in body and "partner: hkpmc" in body
    assert "已恢复" in str(resolved["Subject"]) and "event: resolved" in resolved.get_content()
    for _, message in mailbox.messages:
        assert PATIENT_NAME not in message.as_string() and PATIENT_MRN not in message.as_string()


def test_the_smtp_password_from_the_environment_wins(
    settings: Settings, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = mail_settings(settings, mailbox, tmp_path / "smtp-password")
    (tmp_path / "smtp-password").write_text("wrong\n", encoding="utf-8")
    monkeypatch.setenv(PASSWORD_ENV, mailbox.password)
    [(channel, error)] = notifier_from(settings).test(_test_notice())
    assert error is None and channel == f"e-mail {mailbox.host}:{mailbox.port}"
    assert "测试通知" in mailbox.messages[0][1].get_content()


def test_a_refused_login_is_one_clear_failure(
    settings: Settings, mailbox: Mailbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    settings = mail_settings(settings, mailbox, tmp_path / "smtp-password")
    (tmp_path / "smtp-password").write_text("wrong\n", encoding="utf-8")
    (tmp_path / "smtp-password").chmod(0o600)
    [(_, error)] = notifier_from(settings).test(_test_notice())
    assert error is not None and "login refused (535)" in error
    assert "[alert.notify-failed]" in error and "wrong" not in error
    assert mailbox.messages == []


def test_mail_settings_must_name_sender_and_recipients(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="alert_email_from and alert_email_to"):
        notifier_from(replace(settings, alert_smtp_host="127.0.0.1"))


def test_the_webhook_retries_with_backoff_and_logs_no_secret(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    waits: list[float] = []
    channel = WebhookChannel(hook.url + "?key=SECRET", attempts=3, backoff=0.5, sleep=waits.append)
    hook.answers = [503, 429]
    with caplog.at_level(logging.WARNING, logger="gateway.alerts"):
        assert Notifier([channel]).send(_test_notice())
    assert waits == [0.5, 1.0]
    assert len(hook.received) == 1
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["alert.notify-failed"] * 2
    assert "HTTP 503 (attempt 1 of 3)" in caplog.records[0].getMessage()
    assert all("SECRET" not in r.getMessage() and "/hooks" not in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_a_webhook_refusal_is_not_retried(hook: Hook) -> None:
    waits: list[float] = []
    hook.answers = [401]
    channel = WebhookChannel(hook.url, attempts=3, backoff=0.5, sleep=waits.append)
    with pytest.raises(AlertError) as caught:
        channel.send(_test_notice())
    assert caught.value.issue.code == "alert.notify-failed"
    assert "HTTP 401 (not retried)" in caught.value.issue.message and waits == []


def test_an_unreachable_webhook_fails_after_its_attempts(tmp_path: Path) -> None:
    waits: list[float] = []
    channel = WebhookChannel("http://127.0.0.1:9/x", attempts=2, backoff=0.1, sleep=waits.append)
    with pytest.raises(AlertError, match="ConnectError after 2 attempts"):
        channel.send(_test_notice())
    assert waits == [0.1]


def test_a_webhook_token_file_others_can_read_is_refused(hook: Hook, tmp_path: Path) -> None:
    """The webhook's bearer token was sent from a file anyone on the host could read;
    refused at each read (a file opened up since is refused at once), as the API token
    file and the keys are, and nothing posted."""
    token_file = tmp_path / "hook-token"
    token_file.write_text("hook-token-1\n", encoding="utf-8")
    token_file.chmod(0o644)
    channel = WebhookChannel(hook.url, token_file=token_file)
    with pytest.raises(ConfigError) as caught:
        channel.send(_test_notice())
    assert caught.value.code == "config.bad-setting"
    assert caught.value.issue.message == (
        f"alert_webhook_token_file: {token_file}: the alert webhook token file must be "
        "private (chmod 600)"
    )
    assert hook.received == []
    token_file.chmod(0o600)
    channel.send(_test_notice())
    assert hook.received[0][0]["Authorization"] == "Bearer hook-token-1"


def test_test_notify_without_a_channel(settings: Settings) -> None:
    with pytest.raises(AlertError) as caught:
        notifier_from(settings).test(_test_notice())
    assert caught.value.issue.code == "alert.no-channel"


def _test_notice():  # type: ignore[no-untyped-def]
    from gateway.alerts import Alert, Notice, labels

    texts = labels().texts("test")
    alert = Alert("test", "test", 0.0, 0.0, "warning", T0, texts, texts)
    return Notice("test", alert, T0)
