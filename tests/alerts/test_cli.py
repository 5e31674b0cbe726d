"""gateway alerts list|check|test-notify on a real store in a GATEWAY_HOME, notifying
a real local webhook receiver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.store import Store, utcnow

from .conftest import SMALL, Hook, Queue, write_overrides


def run(capsys: pytest.CaptureFixture[str], home: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--home", str(home), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def queued(home: Path, hook: Hook, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_overrides(home, SMALL)
    monkeypatch.setenv("GATEWAY_ALERT_WEBHOOK_URL", hook.url)
    store = Store.for_home(home)
    Queue(store).add("njmu2", 3, at=utcnow())
    store.close()
    return home


def test_list_check_and_list_all(
    queued: Path, hook: Hook, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, queued, "alerts", "list", "--json")
    [alert] = json.loads(out)
    assert code == 0 and (alert["partner"], alert["kind"]) == ("njmu2", "queue_depth")
    assert alert["firing_since"] is None and hook.received == []  # list sends nothing

    code, out, _ = run(capsys, queued, "alerts", "check")
    assert code == 1  # an alert fires
    assert out.splitlines()[0] == "notified firing: njmu2 queue_depth"
    code, out, _ = run(capsys, queued, "alerts", "check")
    assert code == 1 and "notified" not in out
    assert hook.events() == [("firing", "njmu2", "queue_depth")]

    code, out, _ = run(capsys, queued, "alerts", "list", "--lang", "zh-Hant-HK")
    assert code == 0
    assert "南京醫科大學第二附屬醫院：待發送記錄 3 條，已達閾值 3 條" in out
    code, out, _ = run(capsys, queued, "alerts", "list", "--all", "--json")
    [state] = json.loads(out)
    assert (state["severity"], state["notified"]) == ("warning", "warning")
    assert state["firing_since"] is not None and state["resolved_at"] is None


def test_test_notify(queued: Path, hook: Hook, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, queued, "alerts", "test-notify")
    assert code == 0 and out.strip().endswith(": ok")
    [(event, partner, kind)] = hook.events()
    assert (event, partner, kind) == ("test", "test", "test")
    assert hook.received[0][1]["texts"]["zh-Hant-HK"] == "測試通知：警報渠道運作正常"


def test_a_bad_alerts_file_is_one_error_line(
    queued: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_overrides(queued, "alerts: {defaults: {queue_depth: {warning: -1}}}\n")
    code, _, err = run(capsys, queued, "alerts", "list")
    assert code == 2
    assert err.startswith(f"error: {path}: alerts.defaults.queue_depth.warning: expected")
    assert err.rstrip().endswith("[config.alerts]")
