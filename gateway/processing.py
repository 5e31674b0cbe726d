"""Processing a stored message: load its original bytes, convert them with the
current mappings, keep the outcome. Used by the listeners (after the ACK), by
``gateway messages reprocess`` and by ``POST /messages/{id}/$reprocess``.

It joins the store (below) and the pipeline (above it), so it lives above both: the
store itself never imports the stages that convert what it keeps."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

from sqlalchemy.engine import Connection

from .audit import audit_log, record_operator, store_hook
from .config import Settings
from .datafiles import load_data_file
from .envelope import Record
from .errors import GatewayError, Issue
from .intake.hl7v2 import Hl7View, parse_message, split_messages
from .metrics import observe_stage, trace_stage, traced_message, tracing_on
from .pipeline import Converter
from .store import (
    SENDER_REFUSALS,
    StageOutcome,
    Store,
    StoredOutcome,
    StoreError,
    StudyCheck,
    add_filters,
    check_study,
    message_filter,
    open_store,
)

__all__ = [
    "SENDER_REFUSALS",
    "SENDER_REFUSED",
    "AuditHook",
    "add_cli",
    "current_converter",
    "on_converted",
    "outcome_of",
    "process_message",
    "reprocess",
    "sender_refusal",
]

log = logging.getLogger("gateway.store")

# Called with a message's id after it converted: the outbound path (gateway/delivery),
# which `gateway serve` registers here (the store is an earlier stage: it cannot import it).
Converted = Callable[[int], None]
_converted: list[Converted] = []
SENDER_REFUSED = "store.sender-refused"
# The audit trail's hook (gateway.audit.store_hook): called with the outcome's write
# transaction, the message's id and its records; the caller passes it (no import here).
AuditHook = Callable[[Connection, int, Sequence[Record]], None]


def on_converted(hook: Converted) -> Callable[[], None]:
    """Have ``hook(message_id)`` called after every stored message that converted (in
    this process); returns the function that removes it."""
    _converted.append(hook)
    return lambda: _converted.remove(hook) if hook in _converted else None


def outcome_of(records: list[Record], raw: bytes = b"", fmt: str = "hl7v2") -> StageOutcome:
    """THE mapping from what the converter made to what the store keeps: one outcome of
    the "convert" stage. Converted when every record converted (one Bundle; several are
    kept one JSON document per line); failed otherwise, with every record's issues."""
    ok = bool(records) and all(r.ok for r in records)
    issues = tuple(i for r in records for i in r.issues)
    if not records:
        issues = (Issue("intake.empty", "the stored message holds no record"),)
    bundles = [r.bundle_json for r in records if r.bundle_json is not None]
    output = None
    if ok and len(bundles) == 1:
        output = bundles[0]
    elif ok:
        output = b"".join(b.rstrip(b"\n").replace(b"\n", b"") + b"\n" for b in bundles)
    patients = [p for r in records for p in _bundle_patients(r.bundle)]
    if not patients and fmt == "hl7v2":
        patients = _pid3(raw)  # a failed message is found by its patient too
    first = records[0] if records else None
    return StageOutcome(
        stage="convert",
        state="converted" if ok else "failed",
        output=output,
        issues=issues,
        patients=tuple(dict.fromkeys(patients)),
        control_id=first.control_id if first else None,
        message_type=first.message_type if first else None,
        sender=first.sender if first else None,
        charset=first.charset if first else None,
    )


def current_converter(settings: Settings) -> Converter:
    """A converter built from the mapping files as they are now. Data files are cached
    per process (they are read-only while converting); reprocessing after a mapping fix
    must read them again."""
    load_data_file.cache_clear()
    return Converter(settings)


def process_message(
    store: Store,
    converter: Converter,
    message_id: int,
    lock: threading.Lock | None = None,
    audit: AuditHook | None = None,
) -> StoredOutcome:
    """Convert a stored message from its original bytes and record the outcome (the
    earlier outcomes stay). ``lock`` serialises use of a converter shared by threads;
    ``audit`` appends the audit events in the outcome's own transaction. A DICOM
    listener's study message lacking instances taken of its study before is not
    converted: it fails with ``intake.dicom-partial-study`` (gateway/store/_studies.py).
    A message the MLLP listener refused for its sender is not converted at all: it
    raises ``store.sender-refused`` (:func:`sender_refusal`)."""
    found = store.raw(message_id)
    if found is None:
        raise StoreError("not-found", f"no message {message_id} in the store")
    raw, fmt, sender = found
    refusal = sender_refusal(store, message_id)
    if refusal is not None:
        raise refusal
    if raw is None:
        raise StoreError(
            "pruned",
            "its original bytes were removed by retention (retention_days): it cannot be "
            "converted again",
            record=f"message {message_id}",
        )
    study = check_study(store, message_id) if fmt == "dicom" else None
    if study is not None and study.refusal is not None:
        return _refuse(store, message_id, raw, sender, study, audit)
    started = time.perf_counter()
    with lock or nullcontext(), traced_message(message_id):  # records join its trace
        records = _convert(converter, raw, fmt, sender, message_id)
    duration = int((time.perf_counter() - started) * 1000)
    within = _within(store, message_id, records, audit, study)
    stored = store.record_outcome(message_id, outcome_of(records, raw, fmt), duration, within)
    observe_stage("process", time.perf_counter() - started)  # converted and kept
    if tracing_on():  # the step's span, in the message's trace
        code = str(stored.issues[0].get("code")) if stored.issues else None
        trace_stage("process", time.perf_counter() - started, message_id, stored.state, code)
    if stored.state == "converted":
        for hook in list(_converted):
            try:
                hook(message_id)
            except Exception:  # the message stays converted: the outbound path finds it later
                log.exception("after converting message %s", message_id)
    return stored


def sender_refusal(store: Store, message_id: int) -> StoreError | None:
    """Why a stored message may not be converted, as it was refused for its sender (by
    its current ``intake`` outcome's code, :data:`SENDER_REFUSALS`), or None. Converted
    again, it would be filed and routed in the name of an institution that never sent
    it. When that institution's own connection sends the same bytes, the store takes
    them on the row and the refusal is no longer current (``Store._accept_refused``):
    only then is it converted. Read by code, never from the refusal's text."""
    for issue in store.current_issues(message_id, "intake"):
        code = issue.get("code")
        if code in SENDER_REFUSALS:
            dicom = code.startswith("intake.dicom-")
            names = "its identifiers name" if dicom else "its MSH-4 names"
            return StoreError(
                SENDER_REFUSED,
                f"refused when received ({code}: {SENDER_REFUSALS[code]}), so never "
                f"converted: the institution {names} must send it over its own connection",
                record=f"message {message_id}",
                location=issue.get("location") or "MSH-4",
            )
    return None


def _within(
    store: Store,
    message_id: int,
    records: Sequence[Record],
    audit: AuditHook | None,
    study: StudyCheck | None,
) -> Callable[[Connection], None] | None:
    """What the outcome's transaction keeps too: the audit events, a study's instances."""
    if audit is None and study is None:
        return None

    def within(conn: Connection) -> None:
        if audit is not None:
            audit(conn, message_id, records)
        if study is not None:
            study.remember(store, conn)

    return within


def _refuse(
    store: Store,
    message_id: int,
    raw: bytes,
    sender: str | None,
    study: StudyCheck,
    audit: AuditHook | None,
) -> StoredOutcome:
    """A partial study's outcome: failed with the refusal, nothing converted."""
    assert study.refusal is not None
    record = Record(raw, f"message {message_id}", 1, format="dicom", kind="study")
    record.control_id, record.sender = study.study_uid, sender
    record.issues.append(study.refusal.issue)
    log.info("message %s not converted: %s", message_id, study.refusal.issue.line())
    within = _within(store, message_id, [record], audit, study)
    return store.record_outcome(message_id, outcome_of([record], raw, "dicom"), 0, within)


def _convert(
    converter: Converter, raw: bytes, fmt: str, sender: str | None, message_id: int
) -> list[Record]:
    source = f"message {message_id}"
    try:
        if fmt == "dicom":
            facility = converter.known_sender(sender) if sender else None
            return converter.convert(raw, source, fmt, sender=facility)
        return converter.convert(raw, source, fmt)
    except GatewayError as exc:  # a configuration problem: the message failed, not us
        record = Record(raw, source, 1, format=fmt)
        record.issues.append(exc.issue)
        return [record]
    except Exception:  # never lose the message to a bug: it fails, with the log saying why
        log.exception("conversion of stored message %s crashed", message_id)
        record = Record(raw, source, 1, format=fmt)
        record.issues.append(
            Issue("internal", "the conversion crashed; see the gateway's log", location="convert")
        )
        return [record]


def _bundle_patients(bundle: dict[str, Any] | None) -> list[str]:
    found: list[str] = []
    for entry in (bundle or {}).get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "Patient":
            continue
        for ident in resource.get("identifier") or []:
            value = ident.get("value")
            if value:
                found.append(f"{ident.get('system', '')}|{value}")
    return found


def _pid3(raw: bytes) -> list[str]:
    """PID-3 identifiers (no system: none is known without the mapping) of a message
    that did not convert, each read as intake reads it (unescaped, padding spaces
    stripped). One intake refuses (a control character, a TAB or an ideographic space
    at an end: intake.control-characters) is left out: stripped, ``P1<TAB>`` was
    indexed as patient ``P1``, perhaps another patient's MRN."""
    try:
        view = Hl7View(parse_message(split_messages(raw)[0]))
    except (GatewayError, IndexError):
        return []
    found = []
    for segment in view.select("/PID", view.root):
        for identifier in view.select("PID-3(*)", segment):
            try:
                found += [f"|{value}" for value, _ in view.values(".1", identifier)]
            except GatewayError:  # refused by intake: not an identifier of anyone's
                continue
    return found


# -- gateway messages reprocess ------------------------------------------------------


def reprocess(
    store: Store,
    settings: Settings,
    converter: Converter,
    message_id: int,
    audit: AuditHook | None,
    *,
    lock: threading.Lock | None = None,
    who: str | None = None,
) -> StoredOutcome:
    """An operator's reprocess (the CLI, the API, the console): ``process_message``,
    then the operator's event; a message refused for its sender is refused, and the
    refusal audited too (who tried to convert it)."""
    try:
        outcome = process_message(store, converter, message_id, lock, audit)
    except StoreError as exc:
        if exc.code == SENDER_REFUSED:
            refused = f"{exc.code}: {exc.issue.message}"
            record_operator(store, settings, "reprocess", [message_id], who=who, refused=refused)
        raise
    record_operator(store, settings, "reprocess", [message_id], who=who)
    return outcome


def cmd_reprocess(args: argparse.Namespace, settings: Settings) -> int:
    if (args.id is None) == (args.state is None):
        print("error: give a message id or --state (e.g. --state failed)", file=sys.stderr)
        return 2
    store = open_store(settings)
    ids: Iterable[int] = (
        [args.id] if args.id is not None else store.ids(message_filter(args, settings))
    )
    converter = current_converter(settings)

    audit = store_hook(audit_log(store, settings), channel="cli", with_receipt=False)
    failed = done = 0
    skipped: Counter[str] = Counter()
    try:
        for message_id in ids:
            try:
                outcome = reprocess(store, settings, converter, message_id, audit)
            except StoreError as exc:  # one message asked for: its error, exit 2
                if args.id is not None or exc.code not in _SKIPS:
                    raise
                skipped[exc.code] += 1  # in bulk: named, counted, and the batch goes on
                print(f"message {message_id}: skipped: {exc.issue.line()}")
                continue
            done += 1
            failed += outcome.state != "converted"
            print(f"message {message_id}: {outcome.state} (attempt {outcome.attempt})")
            for issue in outcome.issues:
                if issue["severity"] != "warning" or not args.quiet:
                    where = f"{issue['location']}: " if issue.get("location") else ""
                    print(f"   {issue['severity']}: {where}{issue['message']} [{issue['code']}]")
    finally:
        store.close()
    print(f"reprocessed {done}, failed {failed}{_skipped(skipped)}", file=sys.stderr)
    # An operator's script reads 1 as "a message failed to convert": a skip by rule
    # (refused for its sender, pruned) is none; by id those are errors (exit 2, above).
    return 1 if failed else 0


# What a bulk reprocess skips (and counts) instead of stopping: code -> why, in the summary.
_SKIPS = {
    SENDER_REFUSED: f"refused for their sender when received ({SENDER_REFUSED}): the "
    "institution each one's MSH-4 names must send it over its own connection",
    "store.pruned": "pruned (store.pruned): their original bytes were removed by retention "
    "(retention_days)",
}


def _skipped(counts: Counter[str]) -> str:
    return "".join(
        f", skipped {counts[code]} {why}" for code, why in _SKIPS.items() if counts[code]
    )


def add_cli(verbs: Any) -> None:
    """Add ``reprocess`` to the ``gateway messages`` verbs (gateway/store/_cli.py)."""
    again = verbs.add_parser(
        "reprocess",
        help="convert again from the stored original (earlier outcomes stay)",
        description="Convert a stored message again from its original bytes with the "
        "current mappings: one by id, or every message the filters match, oldest first. "
        "In bulk, a message that may not be converted is skipped, named and counted, and "
        "the batch goes on: refused for its sender when received (store.sender-refused), "
        "or its content pruned by retention (store.pruned).",
        epilog="exit status: 0 every message reprocessed converted (skipped ones are no "
        "failure), 1 a message failed to convert, 2 an error (by id: the message is "
        "unknown, refused for its sender or pruned)",
    )
    again.add_argument("id", type=int, nargs="?")
    add_filters(again, full=False)
    again.add_argument("-q", "--quiet", action="store_true", help="hide warnings")
    again.set_defaults(func=cmd_reprocess)
