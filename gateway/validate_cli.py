"""``gateway validate FILE... [--profile URL] [--json]``: FHIR JSON resources or Bundles
checked by the gateway's validator (``gateway.validation``), one summary per file::

    bundle.json: 2 errors, 1 warning
      error    Bundle.entry[0].resource.birthDate  Invalid date [validation.structure]

Files, folders (their ``*.json`` files) and ``-`` (stdin); a file may hold one resource,
a JSON array of them or one per line (``#n`` names each). One bad file never stops the
others; a file that cannot be read or is not JSON is an error of that file. The exit
code is 0 only when no file has an error (warnings do not count), 1 otherwise, 2 for
usage errors. ``--json`` prints one OperationOutcome per file instead (pretty for one
file, one per line for several), each issue naming the file in ``details.text``.

:func:`check_resource` is shared with ``POST /$validate`` (gateway/api/_validate.py).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import orjson

from . import validation
from .config import Settings
from .errors import IntakeError, Issue, operation_outcome
from .inputs import input_files

__all__ = ["add_cli", "all_ok", "check_resource", "cmd_validate", "parse_resource", "summary"]

_SEVERITY_ORDER = ("fatal", "error", "warning", "information")


def all_ok(record: str | None = None) -> Issue:
    """The one issue of a valid resource's OperationOutcome (FHIR $validate's "All OK")."""
    return Issue(
        "validation.ok",
        "All OK: no errors or warnings",
        record,
        severity="information",
        details={"issue_type": "informational"},
    )


def check_resource(resource: dict[str, Any], profile: str | None = None) -> list[Issue]:
    """Every issue (errors, warnings, information) for one resource — a Bundle with its
    entries, each against the profile it names — against ``profile`` when given (else
    what ``meta.profile`` declares, else the base R4 definition). A transaction Bundle is
    also checked for references that resolve to none of its entries, as the pipeline
    does."""
    entries = resource.get("entry")
    if resource.get("resourceType") == "Bundle" and isinstance(entries, list):
        if not all(isinstance(e, dict) for e in entries):
            return _entries_apart(resource, entries, profile)
        issues = validation.validate_bundle(resource, all_issues=True, profile=profile)
    else:
        issues = validation.validate_resource(resource, profile=profile, all_issues=True)
    if resource.get("resourceType") == "Bundle" and resource.get("type") == "transaction":
        entries = resource.get("entry")
        if isinstance(entries, list) and all(isinstance(e, dict) for e in entries):
            issues += validation.check_references(resource)
    return _once(issues)


_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", str: "a string",
               list: "an array", type(None): "null"}  # fmt: skip
_ENTRY_INDEX = re.compile(r"Bundle\.entry\[(\d+)\]")


def _entries_apart(bundle: dict[str, Any], entries: list[Any], profile: str | None) -> list[Issue]:
    """A Bundle with entries that are not objects: one error per such entry, naming it,
    and the Bundle checked without them (the other entries' issues keep their own
    indices), instead of one error for the whole list or a crash of the validator."""
    kept = [n for n, e in enumerate(entries) if isinstance(e, dict)]
    issues = [
        Issue(
            "validation.structure",
            f"{_JSON_KINDS.get(type(e), 'a value')} where a BundleEntry (a JSON object) "
            "belongs: not checked further",
            location=f"Bundle.entry[{n}]",
        )
        for n, e in enumerate(entries)
        if not isinstance(e, dict)
    ]
    rest = check_resource({**bundle, "entry": [entries[n] for n in kept]}, profile)

    def moved(text: str | None) -> str | None:
        if text is None:
            return None
        return _ENTRY_INDEX.sub(lambda m: f"Bundle.entry[{kept[int(m[1])]}]", text)

    for issue in rest:
        issues.append(
            replace(
                issue,
                message=moved(issue.message) or issue.message,
                location=moved(issue.location),
                expression=moved(issue.expression),
            )
        )
    return issues


def _once(issues: list[Issue]) -> list[Issue]:
    seen: set[tuple[str, str | None, str]] = set()
    out = []
    for issue in issues:
        key = (issue.code, issue.fhirpath or issue.location, issue.message)
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def parse_resource(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a FHIR resource (a JSON object with a resourceType), or IntakeError
    naming what is wrong and where (line and column: never the content)."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise IntakeError(
            "json",
            f"{what} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
        ) from None
    if not isinstance(parsed, dict):
        raise IntakeError(
            "not-a-resource", f"{what} is JSON but not an object: not a FHIR resource"
        )
    if not isinstance(parsed.get("resourceType"), str) or not parsed["resourceType"]:
        raise IntakeError(
            "not-a-resource",
            f"{what} is a JSON object without a resourceType: not a FHIR resource",
            location="resourceType",
        )
    return parsed


def _files(paths: list[str]) -> list[str]:
    """The files named, and the ``*.json`` files of the folders named (hidden skipped)."""
    return input_files(paths, (".json",))


def _check_file(name: str, profile: str | None) -> tuple[str, list[Issue]]:
    """(the file's display name, its issues); a file's own problem is one error issue."""
    shown = "<stdin>" if name == "-" else name
    try:
        data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
        issues = _check_data(data, shown, profile)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        issues = [Issue("intake.file-unreadable", f"cannot read the file: {reason}")]
    except IntakeError as exc:
        issues = [exc.issue]
    return shown, [_with_record(i, shown) for i in issues]


def _check_data(data: bytes, shown: str, profile: str | None) -> list[Issue]:
    """One resource, or several: a JSON array of them (``gateway convert``'s batch
    examples) or one per line (its output to stdout for several records), each named
    ``file #n`` in its issues."""
    try:
        return check_resource(parse_resource(data, "the file"), profile)
    except IntakeError as exc:
        several = _several(data)
        if several is None:
            raise
        if not several:
            raise IntakeError("not-a-resource", "the file holds no resource") from exc
    issues: list[Issue] = []
    for n, item in enumerate(several, 1):
        where = f"{shown} #{n}"
        try:
            found = check_resource(parse_resource(item, f"resource #{n}"), profile)
        except IntakeError as exc:
            found = [exc.issue]
        issues += [_with_record(i, where) for i in found]
    return issues


def _several(data: bytes) -> list[bytes] | None:
    """The items of a JSON array, or the lines of JSON-per-line text; None for neither."""
    if data.lstrip()[:1] == b"[":
        try:
            items = orjson.loads(data)
        except orjson.JSONDecodeError:
            return None
        return [orjson.dumps(i) for i in items] if isinstance(items, list) else None
    lines = [line for line in data.splitlines() if line.strip()]
    return lines if len(lines) > 1 and all(line.lstrip()[:1] == b"{" for line in lines) else None


def _with_record(issue: Issue, record: str) -> Issue:
    return issue if issue.record else replace(issue, record=record)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(name: str, issues: list[Issue]) -> list[str]:
    """HAPI-like: ``file: 2 errors, 1 warning`` then one line per issue."""
    errors = sum(i.severity in ("fatal", "error") for i in issues)
    warnings = sum(i.severity == "warning" for i in issues)
    notes = sum(i.severity == "information" for i in issues)
    head = f"{name}: {_plural(errors, 'error')}, {_plural(warnings, 'warning')}"
    if notes:
        head += f", {notes} information"
    lines = [head]
    ordered = sorted(issues, key=lambda i: _SEVERITY_ORDER.index(i.severity))
    for issue in ordered:
        where = issue.fhirpath or issue.location or "-"
        if issue.record and issue.record.startswith(f"{name} #"):  # one of several
            where = f"{issue.record[len(name) + 1 :]} {where}"
        lines.append(f"  {issue.severity:<8} {where}  {issue.message} [{issue.code}]")
    return lines


def cmd_validate(args: argparse.Namespace, settings: Settings, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    files = _files(args.paths)
    if not files:
        print("error: no input files (folders are searched for *.json files)", file=sys.stderr)
        return 2
    failed = 0
    outcomes: list[dict[str, Any]] = []
    for name in files:
        shown, issues = _check_file(name, args.profile)
        failed += any(i.severity in ("fatal", "error") for i in issues)
        if args.json:
            outcomes.append(operation_outcome(issues or [all_ok(shown)]))
        else:
            print("\n".join(summary(shown, issues)), file=out)
    if args.json:
        if len(outcomes) == 1:
            out.write(orjson.dumps(outcomes[0], option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            out.write("".join(orjson.dumps(o).decode() + "\n" for o in outcomes))
    else:
        print(f"validated {_plural(len(files), 'file')}: {failed} with errors", file=sys.stderr)
    return 0 if failed == 0 else 1


def add_cli(sub: Any) -> None:
    """Register ``gateway validate``."""
    parser = sub.add_parser(
        "validate",
        help="validate FHIR JSON resources or Bundles with the gateway's validator",
        description="Validate FHIR R4 JSON resources or Bundles (files, folders of *.json, "
        "'-' for stdin). Exit 0 only when no file has an error.",
    )
    parser.add_argument("paths", nargs="+", help="files or folders ('-' for stdin)")
    parser.add_argument(
        "--profile",
        help="canonical URL of the profile to validate against (default: the profiles "
        "the resource declares in meta.profile, else the base R4 definition)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print an OperationOutcome per file instead"
    )
    parser.set_defaults(func=cmd_validate)
