"""Alerts per partner (docs/alerts.md): thresholds as data (``seeds/alerts.yaml`` under
``$GATEWAY_HOME/alerts.yaml``) on the outbox's queue depth, oldest waiting record, dead
letters, policy holds and records our credentials block (refused, or no token); their
state in the store (``alert_state``), each transition notified once by webhook or
e-mail, in zh-Hans, zh-Hant-HK and en.

    alerts = current(store, settings)            # what fires now (the console)
    stop = start_alert_watch(store, settings, 60)  # evaluate and notify, in a thread
"""

from ._cli import add_cli
from ._config import (
    KINDS,
    LEVELS,
    LISTENER_KINDS,
    PARTNER_KINDS,
    AlertRules,
    Threshold,
    alert_rules,
    load_rules,
    override_file,
    parse_duration,
    seeds_file,
)
from ._evaluate import Alert, AlertState, CheckResult, Notice, check, current, observe, states
from ._labels import LANGUAGES, labels, partner_names
from ._notify import (
    PASSWORD_ENV,
    AlertError,
    Channel,
    EmailChannel,
    Notifier,
    WebhookChannel,
    notifier_from,
)
from ._tables import alert_state
from ._watch import start_alert_watch

__all__ = [
    "KINDS",
    "LANGUAGES",
    "LEVELS",
    "LISTENER_KINDS",
    "PARTNER_KINDS",
    "PASSWORD_ENV",
    "Alert",
    "AlertError",
    "AlertRules",
    "AlertState",
    "Channel",
    "CheckResult",
    "EmailChannel",
    "Notice",
    "Notifier",
    "Threshold",
    "WebhookChannel",
    "add_cli",
    "alert_rules",
    "alert_state",
    "check",
    "current",
    "labels",
    "load_rules",
    "notifier_from",
    "observe",
    "override_file",
    "parse_duration",
    "partner_names",
    "seeds_file",
    "start_alert_watch",
    "states",
]
