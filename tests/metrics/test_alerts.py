"""deploy/prometheus-alerts.yaml: a rule file Prometheus loads, whose alerts use only the
metrics docs/metrics.md documents, each alert listed in its Alerts table."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import REPO
from tests.metrics.documented import DOC, documented

RULES = REPO / "deploy" / "prometheus-alerts.yaml"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every target
_NAME = re.compile(r"\b(gateway_[a-z_]+|up)\b")


def _rules() -> list[dict[str, object]]:
    data = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    groups = data["groups"]
    assert groups and all(g["name"] and g["rules"] for g in groups)
    return [rule for group in groups for rule in group["rules"]]


def _series_names() -> set[str]:
    names = set()
    for name, (kind, _) in documented().items():
        names.add(name)
        if kind == "histogram":
            names |= {name + "_bucket", name + "_count", name + "_sum"}
    return names


def test_every_rule_is_complete_and_uses_documented_metrics() -> None:
    known = _series_names() | PROMETHEUS_OWN
    for rule in _rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Gateway[A-Za-z]+", str(rule["alert"]))
        labels, annotations = rule["labels"], rule["annotations"]
        assert isinstance(labels, dict) and labels["severity"] in ("warning", "critical")
        assert isinstance(annotations, dict) and annotations["summary"]
        expr = str(rule["expr"])
        used = set(_NAME.findall(expr))
        assert used and used <= known, (rule["alert"], used - known)
        assert expr.count("(") == expr.count(")"), rule["alert"]
        if "for" in rule:
            assert re.fullmatch(r"\d+[smhd]", str(rule["for"])), rule["alert"]


def test_the_docs_list_every_alert_and_no_other() -> None:
    text = DOC.read_text(encoding="utf-8").split("## Alerts", 1)[1]
    listed = set(re.findall(r"^\| `(Gateway[A-Za-z]+)` \|", text, re.MULTILINE))
    assert listed == {str(rule["alert"]) for rule in _rules()}


def test_the_alerts_cover_what_operators_must_hear_of() -> None:
    """Queue depth, oldest age, dead letters and certificate expiry (issue 17)."""
    used = " ".join(str(rule["expr"]) for rule in _rules())
    for needed in (
        "gateway_queue_depth",
        "gateway_queue_oldest_age_seconds",
        'gateway_records_total{outcome="dead"}',
        "gateway_certificate_not_after_timestamp_seconds",
    ):
        assert needed in used, needed


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus) absent")
def test_promtool_accepts_the_rules() -> None:
    done = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
