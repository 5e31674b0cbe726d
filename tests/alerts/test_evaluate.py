"""Thresholds crossing and resolving over a real store: each transition notified once to
a real local webhook receiver, the state kept in the store, texts in three languages
with no patient data."""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from gateway.alerts import (
    LANGUAGES,
    Notifier,
    WebhookChannel,
    alert_state,
    check,
    current,
    notifier_from,
    states,
)
from gateway.config import Settings
from gateway.store import Store

from .conftest import PATIENT_MRN, PATIENT_NAME, T0, Hook, Queue


def webhook(hook: Hook, settings: Settings, token_file: Path) -> tuple[Settings, Notifier]:
    token_file.write_text("# the receiver's token\nhook-token-1\n", encoding="utf-8")
    token_file.chmod(0o600)  # a secret: owner-only, or it is refused
    configured = replace(settings, alert_webhook_url=hook.url, alert_webhook_token_file=token_file)
    return configured, notifier_from(configured)


def test_queue_depth_fires_escalates_and_resolves_each_notified_once(
    store: Store, queue: Queue, settings: Settings, hook: Hook, tmp_path: Path
) -> None:
    settings, notifier = webhook(hook, settings, tmp_path / "token")
    rows = queue.add("hkpmc", 2)
    assert check(store, settings, T0, notifier).notices == []  # 2 < warning 3
    rows += queue.add("hkpmc", 1)

    fired = check(store, settings, T0 + timedelta(minutes=1), notifier)
    assert [(n.event, n.alert.severity, n.alert.value) for n in fired.notices] == [
        ("firing", "warning", 3.0)
    ]
    assert [(a.partner, a.kind, a.severity, a.threshold) for a in fired.alerts] == [
        ("hkpmc", "queue_depth", "warning", 3.0)
    ]
    # Still firing: evaluated again and again, notified no more.
    for minutes in (2, 3, 4):
        assert check(store, settings, T0 + timedelta(minutes=minutes), notifier).notices == []
    assert hook.events() == [("firing", "hkpmc", "queue_depth")]

    rows += queue.add("hkpmc", 2)  # 5: critical
    escalated = check(store, settings, T0 + timedelta(minutes=5), notifier)
    assert [(n.event, n.alert.severity) for n in escalated.notices] == [("escalated", "critical")]
    assert check(store, settings, T0 + timedelta(minutes=6), notifier).notices == []

    queue.move(rows, "delivered")
    resolved = check(store, settings, T0 + timedelta(minutes=7), notifier)
    assert [(n.event, n.alert.severity) for n in resolved.notices] == [("resolved", "critical")]
    assert resolved.alerts == []
    assert check(store, settings, T0 + timedelta(minutes=8), notifier).notices == []
    assert hook.events() == [
        ("firing", "hkpmc", "queue_depth"),
        ("escalated", "hkpmc", "queue_depth"),
        ("resolved", "hkpmc", "queue_depth"),
    ]

    headers, first = hook.received[0]
    assert headers["Authorization"] == "Bearer hook-token-1"
    assert first["firing_since"] == "2026-12-05T08:01:00Z"  # first seen firing
    assert first["gateway"] == "nsch" and first["threshold"] == 3.0
    assert set(first["texts"]) == set(LANGUAGES)
    hk = first["texts"]["zh-Hant-HK"]
    assert "香港" in hk and "待發送記錄 3 條" in hk
    assert "待发送记录 3 条" in first["texts"]["zh-Hans"]
    assert "3 records waiting" in first["texts"]["en"]
    last = hook.received[-1][1]
    assert last["resolved_at"] == "2026-12-05T08:07:00Z"
    assert last["firing_since"] == "2026-12-05T08:01:00Z"
    assert "低於閾值" in last["texts"]["zh-Hant-HK"]
    for _, body in hook.received:  # an alert speaks of queues, never of a patient
        text = json.dumps(body, ensure_ascii=False)
        assert PATIENT_NAME not in text and PATIENT_MRN not in text

    [state] = states(store)
    assert (state.partner, state.kind, state.severity) == ("hkpmc", "queue_depth", None)
    assert state.firing_since is None and state.resolved_at == T0 + timedelta(minutes=7)
    assert state.notified is None and state.notified_at == T0 + timedelta(minutes=7)


def test_a_warning_that_falls_back_from_critical_is_not_notified_again(
    store: Store, queue: Queue, settings: Settings, hook: Hook, tmp_path: Path
) -> None:
    settings, notifier = webhook(hook, settings, tmp_path / "token")
    rows = queue.add("njmu2", 5)
    check(store, settings, T0, notifier)
    queue.move(rows[:1], "delivered")  # 4: warning again, still firing
    assert check(store, settings, T0 + timedelta(minutes=1), notifier).notices == []
    rows += queue.add("njmu2", 1)  # critical again: already notified
    assert check(store, settings, T0 + timedelta(minutes=2), notifier).notices == []
    assert hook.events() == [("firing", "njmu2", "queue_depth")]
    [alert] = current(store, settings, T0 + timedelta(minutes=2))
    assert alert.severity == "critical" and alert.firing_since == T0


def test_oldest_age_dead_letters_and_policy_holds(
    store: Store, queue: Queue, settings: Settings
) -> None:
    queue.add("hkpmc", 1, at=T0)
    dead = queue.add("njmu2", 1, at=T0)
    queue.move(dead, "dead")
    queue.hold("lax2", 2, at=T0)
    alerts = current(store, settings, T0 + timedelta(minutes=20))
    found = {(a.partner, a.kind): a for a in alerts}
    assert set(found) == {
        ("hkpmc", "oldest_age"),
        ("lax2", "policy_holds"),
        ("lax2", "oldest_age"),  # held records wait too (Outbox.stats: not final)
        ("njmu2", "dead_letters"),
    }
    age = found[("hkpmc", "oldest_age")]
    assert (age.value, age.threshold, age.severity) == (1200.0, 900.0, "warning")
    assert age.texts["zh-Hans"].endswith("已等待 20分钟，已达阈值 15分钟")
    assert "20分鐘" in age.texts["zh-Hant-HK"] and "20 min" in age.texts["en"]
    assert found[("lax2", "policy_holds")].value == 2.0
    assert "病人同意" in found[("lax2", "policy_holds")].texts["zh-Hant-HK"]
    assert found[("njmu2", "dead_letters")].value == 1.0
    assert found[("njmu2", "dead_letters")].firing_since is None  # never evaluated by check
    # A held row the delivery stage holds (not the policy) is no policy hold.
    assert all(a.kind != "policy_holds" for a in alerts if a.partner == "njmu2")
    one_hour = current(store, settings, T0 + timedelta(hours=1, minutes=1))
    assert {a.severity for a in one_hour if a.kind == "oldest_age"} == {"critical"}


def test_current_writes_nothing_and_check_records_every_firing_state(
    store: Store, queue: Queue, settings: Settings
) -> None:
    queue.add("hkpmc", 3)
    assert [a.kind for a in current(store, settings, T0)] == ["queue_depth"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(alert_state)).scalar() == 0
    result = check(store, settings, T0)  # no notifier: claimed, nothing sent
    assert [n.event for n in result.notices] == ["firing"]
    assert [(s.partner, s.kind, s.severity, s.notified) for s in states(store)] == [
        ("hkpmc", "queue_depth", "warning", "warning")
    ]


def test_a_kind_switched_off_resolves(
    store: Store, queue: Queue, settings: Settings, home: Path
) -> None:
    queue.add("hkpmc", 3)
    assert [n.event for n in check(store, settings, T0).notices] == ["firing"]
    (home / "alerts.yaml").write_text(
        "alerts:\n  partners:\n    hkpmc:\n      queue_depth: off\n", encoding="utf-8"
    )
    later = check(store, settings, T0 + timedelta(minutes=1))
    assert [(n.event, n.alert.kind) for n in later.notices] == [("resolved", "queue_depth")]
    assert later.alerts == []


def test_a_notice_no_channel_took_is_tried_again_next_time(
    store: Store, queue: Queue, settings: Settings, hook: Hook
) -> None:
    channel = WebhookChannel(hook.url, attempts=2, backoff=0.0)
    notifier = Notifier([channel])
    hook.answers = [503, 503]  # both attempts of the first evaluation fail
    queue.add("hkpmc", 3)
    first = check(store, settings, T0, notifier)
    assert first.notices == [] and [n.event for n in first.failed] == ["firing"]
    assert [s.notified for s in states(store)] == [None]  # the claim was given back
    second = check(store, settings, T0 + timedelta(minutes=1), notifier)
    assert [n.event for n in second.notices] == ["firing"]
    assert second.notices[0].alert.firing_since == T0  # since the first evaluation
    assert hook.events() == [("firing", "hkpmc", "queue_depth")]


def test_a_listener_that_refuses_connections_fires_and_resolves(
    store: Store, settings: Settings, hook: Hook, tmp_path: Path
) -> None:
    settings, notifier = webhook(hook, settings, tmp_path / "token")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    settings = replace(settings, mllp_host="0.0.0.0", mllp_port=port)
    try:
        assert check(store, settings, T0, notifier).notices == []  # it accepts
        listener.close()  # the listener stopped
        down = check(store, settings, T0 + timedelta(minutes=1), notifier)
        assert [(a.partner, a.kind, a.severity) for a in down.alerts] == [
            ("listener:mllp", "listener_down", "critical")
        ]
        assert down.alerts[0].texts["zh-Hant-HK"].startswith("HL7 v2（MLLP）接收端口不接受連接")
        assert check(store, settings, T0 + timedelta(minutes=2), notifier).notices == []
        listener = socket.create_server(("127.0.0.1", port))  # back
        up = check(store, settings, T0 + timedelta(minutes=3), notifier)
        assert [n.event for n in up.notices] == ["resolved"] and up.alerts == []
    finally:
        listener.close()
    assert hook.events() == [
        ("firing", "listener:mllp", "listener_down"),
        ("resolved", "listener:mllp", "listener_down"),
    ]
