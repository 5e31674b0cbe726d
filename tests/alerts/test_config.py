"""Thresholds as data: the network's seeds/alerts.yaml under $GATEWAY_HOME/alerts.yaml,
bad files refused naming the file and key; labels in all three languages; the alert
settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.alerts import (
    KINDS,
    LANGUAGES,
    LEVELS,
    PARTNER_KINDS,
    Threshold,
    alert_rules,
    labels,
    load_rules,
    parse_duration,
    seeds_file,
)
from gateway.alerts._labels import LABELS_FILE, Labels
from gateway.config import Settings
from gateway.datafiles import data_dir
from gateway.errors import ConfigError

from .conftest import write_overrides


def test_the_seeds_give_every_partner_defaults_and_some_their_own() -> None:
    rules = alert_rules(Settings.load(Path("/nonexistent-home"), env={}))
    assert seeds_file(Settings.load(Path("/x"), env={})) == data_dir("seeds") / "alerts.yaml"
    lax2 = rules.for_partner("lax2")
    assert set(lax2) == set(PARTNER_KINDS)
    assert rules.for_partner("listener:mllp") == {"listener_down": Threshold(None, 1.0)}
    assert lax2["oldest_age"] == Threshold(1800.0, 14400.0)
    assert rules.for_partner("hkpmc")["oldest_age"] == Threshold(900.0, 3600.0)
    assert rules.for_partner("nsch")["queue_depth"] == Threshold(500.0, 5000.0)
    assert rules.for_partner("nsch")["dead_letters"] == lax2["dead_letters"]


def test_the_operators_file_wins_level_by_level(home: Path) -> None:
    write_overrides(
        home,
        """
alerts:
  defaults:
    queue_depth: {warning: 10}          # critical stays the seeds' 2000
    dead_letters: off                   # not watched, unless a partner says so
  partners:
    hkpmc:
      oldest_age: {critical: 2h}        # warning stays the seeds' 15m for hkpmc
      dead_letters: {warning: 3}
    njmu2:
      policy_holds: {warning: null}     # its warning off, the critical level kept
""",
    )
    rules = alert_rules(Settings.load(home, env={}))
    assert rules.for_partner("lax2")["queue_depth"] == Threshold(10.0, 2000.0)
    assert "dead_letters" not in rules.for_partner("lax2")
    hkpmc = rules.for_partner("hkpmc")
    assert hkpmc["oldest_age"] == Threshold(900.0, 7200.0)
    assert hkpmc["dead_letters"] == Threshold(3.0, None)
    assert rules.for_partner("njmu2")["policy_holds"] == Threshold(None, 200.0)
    # The file is read afresh: an operator's change applies at the next evaluation.
    write_overrides(home, "alerts:\n  defaults:\n    queue_depth: {warning: 20}\n")
    assert alert_rules(Settings.load(home, env={})).for_partner("lax2")["queue_depth"] == (
        Threshold(20.0, 2000.0)
    )


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("alerts: [1]", "alerts", "expected a mapping with an 'alerts' mapping"),
        ("partners: {}", "alerts", "expected a mapping with an 'alerts' mapping"),
        ("alerts: {default: {}}", "alerts.default", "unknown key"),
        ("alerts: {defaults: {queue: {warning: 1}}}", "alerts.defaults.queue", "unknown kind"),
        ("alerts: {defaults: {queue_depth: 5}}", "alerts.defaults.queue_depth",
         "expected {warning: N, critical: N} or off"),
        ("alerts: {defaults: {queue_depth: {warn: 5}}}", "alerts.defaults.queue_depth.warn",
         "unknown level"),
        ("alerts: {defaults: {queue_depth: {warning: many}}}",
         "alerts.defaults.queue_depth.warning", "expected a whole number from 1, not 'many'"),
        ("alerts: {defaults: {dead_letters: {warning: 0}}}",
         "alerts.defaults.dead_letters.warning", "expected a whole number from 1"),
        ("alerts: {defaults: {oldest_age: {critical: 5 weeks}}}",
         "alerts.defaults.oldest_age.critical", "expected a duration"),
        ("alerts: {defaults: {queue_depth: {warning: 9, critical: 3}}}",
         "alerts.defaults.queue_depth", "warning must not be above critical"),
        ("alerts: {partners: {hkpcm: {queue_depth: {warning: 1}}}}", "alerts.partners.hkpcm",
         "not an institution of the network"),
        ("alerts: {partners: [hkpmc]}", "alerts.partners", "expected a mapping of partner keys"),
        ("alerts: {partners: {nsch: {listener_down: {critical: 1}}}}",
         "alerts.partners.nsch.listener_down", "a listener's: give it in alerts.defaults"),
        ("alerts: {defaults: {listener_down: {warning: 2}}}",
         "alerts.defaults.listener_down.warning", "expected 1 (the listener is down) or off"),
    ],
)  # fmt: skip
def test_a_bad_file_is_a_config_error_naming_file_and_key(
    home: Path, text: str, key: str, problem: str
) -> None:
    path = write_overrides(home, text)
    with pytest.raises(ConfigError) as caught:
        alert_rules(Settings.load(home, env={}))
    issue = caught.value.issue
    assert issue.code == "config.alerts"
    assert issue.message.startswith(f"{path}: {key}: ") and problem in issue.message


def test_a_file_that_does_not_parse_is_named(home: Path) -> None:
    path = write_overrides(home, "alerts: {defaults: [\n")
    with pytest.raises(ConfigError) as caught:
        alert_rules(Settings.load(home, env={}))
    assert caught.value.issue.code == "config.syntax" and str(path) in caught.value.issue.message


def test_a_network_seeds_file_beside_the_network_file_is_used(tmp_path: Path) -> None:
    network = tmp_path / "network.yaml"
    network.write_bytes((data_dir("seeds") / "network.yaml").read_bytes())
    (tmp_path / "alerts.yaml").write_text(
        "alerts:\n  defaults:\n    queue_depth: {warning: 7}\n", encoding="utf-8"
    )
    settings = Settings.load(tmp_path / "home", env={"GATEWAY_NETWORK": str(network)})
    assert seeds_file(settings) == tmp_path / "alerts.yaml"
    # credentials_refused is watched even when a network's file predates it (built in)
    assert alert_rules(settings).for_partner("nsch") == {
        "queue_depth": Threshold(7.0, None),
        "credentials_refused": Threshold(None, 1.0),
    }


def test_credentials_refused_fires_at_one_critical_and_can_be_tuned_or_switched_off(
    home: Path,
) -> None:
    assert alert_rules(Settings.load(home, env={})).for_partner("lax2")[
        "credentials_refused"
    ] == Threshold(None, 1.0)
    write_overrides(
        home,
        "alerts:\n  defaults:\n    credentials_refused: {warning: 1, critical: 5}\n"
        "  partners:\n    hkpmc:\n      credentials_refused: off\n",
    )
    rules = alert_rules(Settings.load(home, env={}))
    assert rules.for_partner("lax2")["credentials_refused"] == Threshold(1.0, 5.0)
    assert "credentials_refused" not in rules.for_partner("hkpmc")


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [(90, 90.0), ("90s", 90.0), ("15m", 900.0), ("4h", 14400.0), ("1h30m", 5400.0),
     ("2d", 172800.0), ("1.5h", 5400.0), ("soon", None), (0, None), ("15m later", None),
     (True, None)],
)  # fmt: skip
def test_durations(raw: object, seconds: float | None) -> None:
    assert parse_duration(raw) == seconds


def test_every_label_is_in_every_language() -> None:
    raw = yaml.safe_load(LABELS_FILE.read_text(encoding="utf-8"))
    assert tuple(raw["languages"]) == LANGUAGES
    for kind in KINDS:
        for part in ("name", "firing", "resolved"):
            assert set(raw["kinds"][kind][part]) == set(LANGUAGES), (kind, part)
    for severity in (*LEVELS, "resolved"):
        assert set(raw["severity"][severity]) == set(LANGUAGES)
    assert labels().duration("zh-Hant-HK", 3 * 86400 + 5 * 3600 + 7) == "3日5小時"
    assert labels().duration("en", 3725) == "1 h 2 min"
    assert labels().duration("zh-Hans", 42) == "42秒"


def test_labels_missing_a_language_are_refused(tmp_path: Path) -> None:
    raw = yaml.safe_load(LABELS_FILE.read_text(encoding="utf-8"))
    del raw["kinds"]["policy_holds"]["resolved"]["zh-Hant-HK"]
    with pytest.raises(ConfigError) as caught:
        Labels(raw, tmp_path / "labels.yaml")
    assert caught.value.issue.code == "config.alerts"
    assert "kinds.policy_holds.resolved.zh-Hant-HK: missing text" in caught.value.issue.message


def test_alert_settings(tmp_path: Path) -> None:
    (tmp_path / "gateway.toml").write_text(
        'alert_webhook_url = "https://ops.example.cn/hooks/gw"\n'
        'alert_webhook_token_file = "secrets/hook-token"\n'
        'alert_email_to = ["ops@nsch.example.cn"]\n'
        "alert_smtp_starttls = false\n",
        encoding="utf-8",
    )
    settings = Settings.load(
        tmp_path, env={"GATEWAY_ALERT_SMTP_PORT": "2525", "GATEWAY_ALERT_INTERVAL": "15"}
    )
    assert settings.alert_webhook_token_file == tmp_path / "secrets" / "hook-token"
    assert settings.alert_email_to == ("ops@nsch.example.cn",)
    assert settings.alert_smtp_port == 2525 and settings.alert_interval == 15.0
    assert settings.alert_smtp_starttls is False
    for name, value in [
        ("GATEWAY_ALERT_WEBHOOK_URL", "ops.example.cn/hook"),
        ("GATEWAY_ALERT_SMTP_PORT", "70000"),
        ("GATEWAY_ALERT_INTERVAL", "0"),
        ("GATEWAY_ALERT_SMTP_STARTTLS", "maybe"),
    ]:
        with pytest.raises(ConfigError) as caught:
            Settings.load(tmp_path / "other", env={name: value})
        assert caught.value.issue.code == "config.bad-setting"
        assert name.removeprefix("GATEWAY_").lower() in caught.value.issue.message


def test_load_rules_without_a_network() -> None:
    rules = load_rules(data_dir("seeds") / "alerts.yaml")
    assert rules.for_partner("anyone")["queue_depth"] == Threshold(200.0, 2000.0)
