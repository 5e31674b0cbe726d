"""``gateway alerts list|check|test-notify``: the alerts firing now (and every recorded
state), one evaluation that records and notifies, and a test notice to every channel."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from ..config import Settings
from ..store import open_store, utcnow
from ._evaluate import Alert, Notice, check, current, states
from ._labels import LANGUAGES, labels
from ._notify import notifier_from

__all__ = ["add_cli"]


def add_cli(sub: Any) -> None:
    """Add ``alerts`` to the gateway command's subparsers."""
    alerts = sub.add_parser("alerts", help="alerts per partner: list, check, test-notify")
    verbs = alerts.add_subparsers(dest="verb", required=True)

    listing = verbs.add_parser(
        "list",
        help="the alerts firing now (--all: every recorded state)",
        description="The thresholds (seeds/alerts.yaml under $GATEWAY_HOME/alerts.yaml) "
        "evaluated over the store now; nothing is recorded or sent.",
    )
    listing.add_argument("--all", action="store_true", help="every recorded state, resolved too")
    listing.add_argument("--lang", choices=LANGUAGES, default="en", help="language of the texts")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_list)

    checking = verbs.add_parser(
        "check",
        help="evaluate, record and notify each transition once (exit 1 while any fires)",
    )
    checking.add_argument("--lang", choices=LANGUAGES, default="en")
    checking.add_argument("--json", action="store_true")
    checking.set_defaults(func=cmd_check)

    test = verbs.add_parser("test-notify", help="send a test notice to every configured channel")
    test.set_defaults(func=cmd_test)


def _json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _line(alert: Alert, lang: str) -> str:
    since = alert.firing_since.isoformat(timespec="seconds") + "Z" if alert.firing_since else "-"
    head = f"{alert.severity:<8} {alert.partner:<8} {alert.kind:<13}"
    return f"{head} since {since}  {alert.texts[lang]}"


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        if args.all:
            found = states(store)
            if args.json:
                _json([s.to_json() for s in found])
            for s in [] if args.json else found:
                print(
                    f"{s.severity or 'ok':<8} {s.partner:<8} {s.kind:<13} value {s.value:g} "
                    f"firing_since {s.firing_since or '-'} resolved_at {s.resolved_at or '-'} "
                    f"notified {s.notified or '-'} at {s.notified_at or '-'}"
                )
            return 0
        alerts = current(store, settings)
    finally:
        store.close()
    if args.json:
        _json([a.to_json() for a in alerts])
    else:
        for alert in alerts:
            print(_line(alert, args.lang))
        if not alerts:
            print("no alert firing")
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    notifier = notifier_from(settings)
    store = open_store(settings)
    try:
        result = check(store, settings, notifier=notifier)
    finally:
        store.close()
    if args.json:
        _json(
            {
                "alerts": [a.to_json() for a in result.alerts],
                "notified": [n.to_json() for n in result.notices],
                "not_notified": [n.to_json() for n in result.failed],
            }
        )
    else:
        for notice in result.notices:
            print(f"notified {notice.event}: {notice.alert.partner} {notice.alert.kind}")
        for notice in result.failed:
            print(f"NOT notified {notice.event}: {notice.alert.partner} {notice.alert.kind}")
        for alert in result.alerts:
            print(_line(alert, args.lang))
    return 1 if result.alerts or result.failed else 0


def cmd_test(args: argparse.Namespace, settings: Settings) -> int:
    texts = labels().texts("test")
    now = utcnow()
    alert = Alert("test", "test", 0.0, 0.0, "warning", now, texts, texts)
    results = notifier_from(settings).test(Notice("test", alert, now, None, settings.institution))
    for channel, error in results:
        print(f"{channel}: {'ok' if error is None else error}")
    return 1 if any(error for _, error in results) else 0
