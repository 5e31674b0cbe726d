"""``gateway send`` (store, convert, route or name the partner, decide, sign, queue;
``--wait``: deliver now) and ``gateway route`` (which rule sends each record where,
nothing stored or sent)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..audit import store_hook
from ..config import Settings
from ..errors import Issue
from ..processing import process_message
from ..store import Incoming, Store, open_store, study_zip
from ._outbound import Outbound, OutboundResult
from ._outbox import DeliveryError, Outbox, OutboxRecord
from ._retry import DeliveryConfig
from ._worker import deliver_rows

__all__ = ["add_send_cli"]


def add_send_cli(sub: Any) -> None:
    send = sub.add_parser(
        "send",
        help="store, convert and queue records for partners (routes, or --to); --wait delivers now",
        description="Each record is stored (channel cli), converted, routed by the routing "
        "rules (seeds/routes.yaml) or sent to the --to partners, decided by the policy, "
        "made the partner's report variant, signed when signing_rules names a key, and "
        "queued; the running `gateway serve` delivers it, or --wait does at once.",
    )
    send.add_argument("paths", nargs="+", metavar="INPUT", help="files or folders")
    send.add_argument(
        "--to",
        action="append",
        metavar="PARTNER",
        help="the partner (institution key or facility code; again for several) instead of "
        "the routing rules",
    )
    send.add_argument("--wait", action="store_true", help="deliver now and report each record")
    send.add_argument(
        "--timeout", type=float, default=300.0, help="with --wait: seconds at most (default 300)"
    )
    send.add_argument(
        "--sender", help="facility code for DICOM studies that do not say who sent them"
    )
    send.add_argument("--progress", action="store_true", help="show progress even off a TTY")
    send.add_argument("--json", action="store_true", help="one JSON document on stdout")
    send.set_defaults(func=cmd_send)

    route = sub.add_parser(
        "route",
        help="which routing rule sends each record to which partner, and why (nothing is sent)",
    )
    route.add_argument("paths", nargs="+", metavar="INPUT")
    route.add_argument("--sender", help="facility code for DICOM studies that name none")
    route.add_argument("--json", action="store_true")
    route.set_defaults(func=cmd_route)


# -- reading inputs as messages ---------------------------------------------------------


@dataclass(slots=True)
class _Message:
    """One message to store: an HL7 v2 message, a CDA document, the DICOM files of one
    argument (one zip: a study spread over files stays together)."""

    source: str
    raw: bytes
    format: str
    index: int = 1
    result: dict[str, Any] = field(default_factory=dict)
    # DICOM: each member of the stored zip -> the path the operator gave, to put back
    # beside the references (``file 1a2b3c4d``) the study's messages name them by
    files: dict[str, str] = field(default_factory=dict)


def _messages(paths: list[str], sender: str | None) -> Iterator[_Message | tuple[str, str]]:
    """The messages of the inputs, or (source, problem) for an input that cannot be read."""
    from ..inputs import RECORD_SUFFIXES, input_files
    from ..intake import detect_format
    from ..intake.hl7v2 import split_messages

    for path in paths:
        dicom: list[tuple[str, bytes]] = []
        shown: dict[str, str] = {}
        for name in input_files([path], RECORD_SUFFIXES):
            try:
                data = Path(name).read_bytes()
            except OSError as exc:
                yield name, f"cannot read: {exc.strerror}"
                continue
            kind = detect_format(data)
            if kind == "dicom":
                inside = Path(name).relative_to(path) if Path(path).is_dir() else Path(name).name
                dicom.append((str(inside), data))
                shown[str(inside)] = name
            elif kind == "cda":
                yield _Message(name, data, "cda")
            else:
                for raw in split_messages(data):
                    yield _Message(name, raw.data, "hl7v2", raw.index)
        if dicom:
            zipped = dicom[0][1] if len(dicom) == 1 and dicom[0][1][:2] == b"PK" else None
            if zipped is not None:
                shown = {m: f"{path}/{m}" for m in _members(zipped)}
            yield _Message(path, zipped or study_zip(dicom), "dicom", files=shown)


def _members(data: bytes) -> list[str]:
    """The member names of a zip the operator gave (none if it cannot be read: the
    intake says so)."""
    import io
    import zipfile

    try:
        return zipfile.ZipFile(io.BytesIO(data)).namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


# -- gateway send ---------------------------------------------------------------------------


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    from ..pipeline import Converter
    from ..progress import Progress

    if args.to:  # a typo (--to nscx) refused before anything is stored, not "routed to no partner"
        args.to = _named_partners(settings, args.to)
    store = open_store(settings)
    try:
        converter = Converter(settings)
        if args.sender:
            converter.known_sender(args.sender)  # a ConfigError now, not one per study
        outbound = Outbound(settings, store)
        items = list(_messages(args.paths, args.sender))
        progress = Progress(len(items), sys.stderr, args.progress or sys.stderr.isatty())
        done: list[_Message] = []
        failed = 0
        for item in items:
            if isinstance(item, tuple):
                progress.say(f"error: {item[0]}: {item[1]}")
                failed += 1
            else:
                failed += _send_one(item, store, converter, outbound, args, progress)
                done.append(item)
            progress.file_done()
        progress.close()
        if not done and failed == 0:
            raise DeliveryError("delivery.no-input", "no record to send in the inputs")
        rows = [p["outbox_id"] for m in done for p in _placed(m) if p["outbox_id"] is not None]
        if args.wait and rows:
            failed += _wait(settings, store, outbound, rows, args)
        _report(args, done, store, rows)
    finally:
        store.close()
    return 1 if failed else 0


def _named_partners(settings: Settings, names: list[str]) -> list[str]:
    from ..network import Network
    from ..partners import configured_partners, partner_key

    partners = configured_partners(settings)
    network = Network.load(settings.network)
    return list(dict.fromkeys(partner_key(n, partners, network, "--to") for n in names))


def _send_one(
    item: _Message,
    store: Store,
    converter: Any,
    outbound: Outbound,
    args: argparse.Namespace,
    progress: Any,
) -> int:
    """Store, convert, queue one message; the number of problems (0 or 1)."""
    receipt = store.receive(
        Incoming(
            item.raw, "cli", item.format, sender=args.sender if item.format == "dicom" else None
        )
    )
    state = store.state_of(receipt.id) or "received"
    issues: list[dict[str, Any]] = []
    if state in ("received", "failed"):  # new, or failed before: (again) with today's mappings
        audit = store_hook(outbound.audit, channel="cli")
        outcome = process_message(store, converter, receipt.id, audit=audit)
        state, issues = outcome.state, outcome.issues
    item.result = {"source": item.source, "message": item.index, "message_id": receipt.id}
    progress.messages += 1
    if state in ("received", "failed", "rejected"):
        progress.failed += 1
        for raw in issues:
            if raw.get("severity") in ("error", "fatal"):
                progress.say(_line(raw, item, receipt.id))
        item.result.update(state=state, issues=issues)
        return 1
    result: OutboundResult = outbound.process(receipt.id, args.to)
    item.result.update(state=result.state, outbound=result.to_json())
    bad = [p for p in result.placed if p.outcome in ("failed", "denied")]
    for p in bad:
        progress.say(
            f"error: {item.source}, message #{item.index}: {p.partner}: {p.outcome}: "
            f"{p.reason} [{p.code}]"
        )
    if not result.placed and not args.json:
        progress.say(f"note: {item.source}, message #{item.index}: routed to no partner")
    return 1 if bad else 0


def _line(raw: dict[str, Any], item: _Message, message_id: int) -> str:
    """An issue of the stored message as the operator reads it: a DICOM file's reference
    (the hash of ``message <id>/<member>``, as the store's conversion named it) with the
    path they gave beside it, on their own terminal only."""
    from ..intake import with_paths

    code = str(raw.get("code"))
    issue = Issue(
        code,
        str(raw.get("message")),
        record=f"{item.source}, message #{item.index}",
        location=raw.get("location"),
        severity=str(raw.get("severity") or "error"),
    )
    files = {f"message {message_id}/{m}": path for m, path in item.files.items()}
    return with_paths(issue.line(), files)


def _placed(item: _Message) -> list[dict[str, Any]]:
    out = item.result.get("outbound") or {}
    return [p for r in out.get("records") or [] for p in r.get("placed") or []]


def _wait(
    settings: Settings, store: Store, outbound: Outbound, rows: list[int], args: argparse.Namespace
) -> int:
    """Deliver until every row queued now is delivered, dead or held (or the timeout);
    the number that are not delivered."""
    config = DeliveryConfig.from_settings(settings)
    finals = deliver_rows(outbound, config, rows, args.timeout)
    bad = [r for r in finals if r.state != "delivered"]
    if not args.json:
        for r in bad:
            why = r.last_error or ("still " + r.state)
            print(
                f"error: outbox {r.id} ({r.label or '-'}) for {r.partner}: {r.state}: {why}"
                + (f" (HTTP {r.last_status})" if r.last_status else ""),
                file=sys.stderr,
            )
    return len(bad)


def _report(args: argparse.Namespace, done: list[_Message], store: Store, rows: list[int]) -> None:
    outbox = Outbox(store)
    finals = {r: outbox.require(r) for r in rows}
    if args.json:
        out = []
        for item in done:
            entry = dict(item.result)
            entry["state"] = store.state_of(item.result["message_id"])
            entry["outbox"] = [
                _row(finals[p["outbox_id"]]) for p in _placed(item) if p["outbox_id"] in finals
            ]
            out.append(entry)
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
        return
    for item in done:
        for p in _placed(item):
            row = finals.get(p["outbox_id"]) if p["outbox_id"] is not None else None
            state = row.state if row else p["outcome"]
            where = f" (outbox {p['outbox_id']})" if p["outbox_id"] is not None else ""
            print(f"{item.source}, message #{item.index} → {p['partner']}: {state}{where}")
    states = [finals[r].state for r in rows]
    summary = ", ".join(f"{s} {states.count(s)}" for s in sorted(set(states)))
    print(f"{len(done)} messages; outbox: {summary or 'nothing queued'}", file=sys.stderr)


def _row(row: OutboxRecord) -> dict[str, Any]:
    return {**row.to_json(), "last_response": row.last_response}


# -- gateway route ---------------------------------------------------------------------------


def cmd_route(args: argparse.Namespace, settings: Settings) -> int:
    from ..intake import with_paths
    from ..network import Network
    from ..partners import configured_partners
    from ..pipeline import Converter
    from ._routes import Routes, facts_of

    network = Network.load(settings.network)
    routes = Routes.load(network, settings.delivery_routes)
    partners = configured_partners(settings)
    institution = network.find(settings.institution) if settings.institution else None
    converter = Converter(settings)
    out = []
    for item in _messages(args.paths, args.sender):
        if isinstance(item, tuple):
            print(f"error: {item[0]}: {item[1]}", file=sys.stderr)
            continue
        sender = converter.known_sender(args.sender) if args.sender else None
        for n, record in enumerate(
            converter.convert(item.raw, item.source, item.format, sender=sender)
        ):
            label = f"{item.source}, message #{item.index}" + (f" record {n + 1}" if n else "")
            if record.bundle is None:
                files = {f"{item.source}/{m}": p for m, p in item.files.items()}
                for issue in record.errors:
                    print(with_paths(issue.line(), files), file=sys.stderr)
                continue
            facts = facts_of(
                record.bundle,
                network,
                format=record.format,
                message_type=record.message_type,
                sender=record.sender,
                raw=record.raw,
            )
            routing = routes.route(facts, partners, institution.key if institution else None)
            if args.json:
                out.append({"record": label, "id": record.control_id, **routing.to_json()})
            else:
                print(f"{label} ({record.message_type}, {record.control_id}):")
                for line in routing.lines():
                    print(f"  {line}")
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(out, option=orjson.OPT_INDENT_2) + b"\n")
    return 0
