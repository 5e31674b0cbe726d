"""The policy on the command line (registered by ``add_cli`` in gateway/cli.py):

gateway policy check BUNDLE --to PARTNER [--from SENDER] [--purpose P] [--json] [-o OUT]
                                   the decision, without sending (exit 0 allowed, 1 not)
gateway policy decisions [--message ID] [--outcome hold] [--json]   stored decisions
gateway policy show ID [--json]    one stored decision: rules, reasons, changes
gateway policy pseudonym SYSTEM|VALUE   the pseudonym of an identifier (re-identification)
gateway consent import FILE        a Consent (or a Bundle of them); releases held records
gateway consent list [--patient SYSTEM|VALUE] [--json]
gateway consent withdraw ID
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ..audit import operator
from ..config import Settings
from ..errors import shape
from ..store import open_store
from ._consent import ConsentRecord, PolicyError
from ._engine import Decision, Policy
from ._minimise import pseudonym
from ._records import PolicyRecords

__all__ = ["add_cli", "render_decision"]

_SHOWN = ("zh-Hans", "en")  # the CLI speaks Chinese and English


def _policy(settings: Settings) -> Policy:
    return Policy(settings)


def _records(settings: Settings) -> PolicyRecords:
    return PolicyRecords(open_store(settings), _policy(settings), audit=settings.audit_enabled)


def render_decision(policy: Policy, decision: Decision) -> str:
    """A decision as text, each label and reason in Chinese and English."""

    def both(text: dict[str, str]) -> str:
        return " / ".join(dict.fromkeys(text[lang] for lang in _SHOWN))

    def ui(key: str) -> str:
        return both(policy.label("ui", key))

    sender = policy.institution(decision.sender, "sender")
    recipient = policy.institution(decision.recipient, "recipient")
    lines = []
    if decision.id is not None:
        lines.append(
            f"#{decision.id}" + (f" (message {decision.message_id})" if decision.message_id else "")
        )
    lines += [
        f"{ui('decision')}: {both(policy.label('outcomes', decision.outcome))}",
        f"{ui('transfer')}: {sender.name('zh-Hans')} → {recipient.name('zh-Hans')} / "
        f"{sender.name('en')} → {recipient.name('en')}",
        f"{ui('purpose')}: {both(policy.purpose_name(decision.purpose))}",
        f"{ui('basis')}: "
        + (
            f"{both(policy.label('bases', decision.basis))} ({decision.agreement})"
            if decision.basis
            else both(policy.label("ui", "none"))
        ),
        f"{ui('rules')}:",
    ]
    for result in decision.results:
        lines.append(f"  [{both(policy.label('outcomes', result.outcome))}] {result.rule}")
        for lang in _SHOWN:
            lines.append(f"      {result.reason[lang]}")
    # The Consent.ids the transfer rests on (ids only: the patient is not shown).
    lines.append(f"{ui('consents')}: " + (", ".join(decision.consents) or ui("none")))
    lines.append(f"{ui('changes')}:" + ("" if decision.changes else f" {ui('none')}"))
    for change in decision.changes:
        kind = f" ({change.kind})" if change.kind else ""
        lines.append(f"  {change.path}: {both(policy.label('actions', change.action))}{kind}")
    return "\n".join(lines) + "\n"


def _decision_json(decision: Decision) -> dict[str, Any]:
    return dict(decision.to_json(), operationOutcome=decision.operation_outcome())


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    records = _records(settings)
    policy = records.policy
    body = sys.stdin.buffer.read() if args.bundle == "-" else Path(args.bundle).read_bytes()
    sender = args.sender or policy.sender_of(body)
    if sender is None:
        raise PolicyError(
            "no-sender",
            "the Bundle does not say which institution sent it: give --from",
            location="--from",
        )
    at = datetime.fromisoformat(args.at) if args.at else None
    decision = policy.decide(
        body, sender, args.to, args.purpose, consents=records, counters=records, now=at
    )
    if args.output and decision.bundle_json is not None:
        Path(args.output).write_bytes(decision.bundle_json)
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps(_decision_json(decision), option=orjson.OPT_INDENT_2) + b"\n"
        )
    else:
        sys.stdout.write(render_decision(policy, decision))
    return 0 if decision.allowed else 1


def cmd_decisions(args: argparse.Namespace, settings: Settings) -> int:
    records = _records(settings)
    found = records.find(message_id=args.message, outcome=args.outcome, limit=args.limit)
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps([d.to_json() for d in found], option=orjson.OPT_INDENT_2) + b"\n"
        )
        return 0
    for d in found:
        message = f" message {d.message_id}" if d.message_id else ""
        sys.stdout.write(
            f"#{d.id}{message} {d.decided_at:%Y-%m-%d %H:%M} {d.outcome} {d.sender}→{d.recipient} "
            f"{d.purpose} {d.agreement or '-'}\n"
        )
    return 0


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    records = _records(settings)
    decision = records.get(args.id)
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps(_decision_json(decision), option=orjson.OPT_INDENT_2) + b"\n"
        )
    else:
        sys.stdout.write(render_decision(records.policy, decision))
    return 0


def cmd_pseudonym(args: argparse.Namespace, settings: Settings) -> int:
    system, bar, value = args.identifier.rpartition("|")
    if not bar or not system or not value:
        raise PolicyError(
            "bad-identifier", "give the identifier as SYSTEM|VALUE", location="identifier"
        )
    sys.stdout.write(pseudonym(_policy(settings).key, system, value) + "\n")
    return 0


def _consent_line(record: ConsentRecord) -> str:
    period = f"{record.start:%Y-%m-%d}" if record.start else "…"
    period += f"–{record.end:%Y-%m-%d}" if record.end else "–…"
    patient = record.patient.rpartition("|")
    return (
        f"{record.id} {record.status} patient {patient[0]}|{shape(patient[2])} "
        f"purposes {','.join(sorted(record.purposes))} recipients "
        f"{','.join(sorted(record.recipients))} {period}"
    )


def _read_json(name: str) -> Any:
    """The JSON of a file (``-``: stdin); one that is not JSON is one line naming the
    file, the line and column and the problem, never a traceback (an unreadable file:
    gateway/cli.py's OSError line)."""
    data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PolicyError(
            "consent-invalid",
            f"not JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}",
            record="stdin" if name == "-" else name,
        ) from None


def cmd_consent_import(args: argparse.Namespace, settings: Settings) -> int:
    records = _records(settings)
    raw = _read_json(args.file)
    items = (
        [e.get("resource") for e in raw.get("entry") or []]
        if isinstance(raw, dict) and raw.get("resourceType") == "Bundle"
        else [raw]
    )
    failed = 0
    for n, item in enumerate(items, 1):
        try:
            record, released = records.import_consent(
                item if isinstance(item, dict) else {}, operator=operator()
            )
        except PolicyError as exc:  # one bad Consent never stops the others
            failed += 1
            where = f"{args.file}, Consent #{n}" if len(items) > 1 else args.file
            sys.stderr.write(exc.with_record(where).issue.line() + "\n")
            continue
        sys.stdout.write(f"imported {_consent_line(record)}\n")
        for r in released:
            target = f"message {r.message_id}" if r.message_id else f"decision #{r.decision.id}"
            sys.stdout.write(
                f"released {target}: {r.decision.outcome} (decision #{r.decision.id})\n"
            )
    return 1 if failed else 0


def cmd_consent_list(args: argparse.Namespace, settings: Settings) -> int:
    found = _records(settings).list_consents(args.patient)
    if args.json:
        sys.stdout.buffer.write(
            orjson.dumps([r.summary() for r in found], option=orjson.OPT_INDENT_2) + b"\n"
        )
        return 0
    for record in found:
        sys.stdout.write(_consent_line(record) + "\n")
    return 0


def cmd_consent_withdraw(args: argparse.Namespace, settings: Settings) -> int:
    record = _records(settings).withdraw(args.id, operator=operator())
    sys.stdout.write(f"withdrawn {_consent_line(record)}\n")
    return 0


def add_cli(sub: Any) -> None:
    """Add ``policy`` and ``consent`` to the gateway command's subparsers."""
    policy = sub.add_parser("policy", help="cross-border transfer policy: check, decisions")
    verbs = policy.add_subparsers(dest="verb", required=True)
    check = verbs.add_parser("check", help="the decision for a Bundle, without sending it")
    check.add_argument("bundle", help="a converted Bundle (JSON file, '-' for stdin)")
    check.add_argument("--to", required=True, help="the recipient (facility code, key or OID)")
    check.add_argument("--from", dest="sender", help="the sender (default: from the Bundle)")
    check.add_argument("--purpose", help="referral, second-opinion, continuing-care")
    check.add_argument("--at", help="decide as at this time (ISO, UTC; default now)")
    check.add_argument("--json", action="store_true")
    check.add_argument("-o", "--output", help="write the Bundle that would leave")
    check.set_defaults(func=cmd_check)
    listing = verbs.add_parser("decisions", help="stored decisions, newest first")
    listing.add_argument("--message", type=int)
    listing.add_argument("--outcome", choices=["allow", "allow-with-changes", "hold", "deny"])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_decisions)
    show = verbs.add_parser("show", help="one stored decision")
    show.add_argument("id", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    alias = verbs.add_parser("pseudonym", help="the pseudonym of SYSTEM|VALUE (needs the key)")
    alias.add_argument("identifier")
    alias.set_defaults(func=cmd_pseudonym)

    consent = sub.add_parser("consent", help="patients' consents to cross-border transfers")
    cverbs = consent.add_subparsers(dest="verb", required=True)
    imp = cverbs.add_parser("import", help="import a FHIR Consent (or a Bundle of them)")
    imp.add_argument("file")
    imp.set_defaults(func=cmd_consent_import)
    lst = cverbs.add_parser("list", help="consents on file")
    lst.add_argument("--patient", help="SYSTEM|VALUE")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_consent_list)
    wd = cverbs.add_parser("withdraw", help="withdraw a consent (status inactive)")
    wd.add_argument("id")
    wd.set_defaults(func=cmd_consent_withdraw)
