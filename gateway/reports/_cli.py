"""Surfaces of the report variants: ``gateway report variants`` and the API helper.

The lead wires them in: ``reports.add_cli(sub)`` in ``gateway/cli.py``'s parser, and
``variant_response`` behind the API's report-variant endpoint.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import IntakeError
from ..pipeline import dump_json
from ._variants import BILINGUAL, ReportVariants

__all__ = [
    "CONTENT_TYPES",
    "add_cli",
    "cmd_report_variants",
    "variant_response",
    "variants_for",
]

CONTENT_TYPES = {
    "json": "application/fhir+json",
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
}
# bilingual: one form per language; "a+b": one form with those columns (a partner's choice).
_CLI_LANGS = (
    *("zh-Hant-HK", "en", BILINGUAL, "zh-Hans"),
    *("zh-Hans+en", "zh-Hant-HK+en", "zh-Hans+zh-Hant-HK+en"),
)

_BUILT: dict[Settings, ReportVariants] = {}
_LOCK = threading.Lock()


def variants_for(settings: Settings) -> ReportVariants:
    """One ReportVariants per settings and process (it loads terminology and network)."""
    with _LOCK:
        found = _BUILT.get(settings)
        if found is None:
            found = _BUILT[settings] = ReportVariants(settings)
        return found


def variant_response(
    body: bytes,
    lang: str | None,
    english: bytes | None = None,
    fmt: str = "json",
    *,
    settings: Settings | None = None,
    partner: str | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of the ``lang`` variant of the report in ``body``.

    Raises GatewayError for bad input, for the API to turn into an OperationOutcome:
    IntakeError (400: not JSON, not a DiagnosticReport, unknown format) and MappingError
    (422: unknown language, an English report that is not linked to this one).
    """
    if fmt not in CONTENT_TYPES:
        raise IntakeError(
            "report-format",
            f"unknown format {fmt!r} (one of {', '.join(CONTENT_TYPES)})",
            location="format",
        )
    maker = variants_for(settings or Settings.load())
    lang = lang or (maker.preferred(partner) if partner else BILINGUAL)
    variant = maker.variant(body, lang, english)
    if fmt == "pdf":
        return 200, CONTENT_TYPES[fmt], variant.pdf
    if fmt == "html":
        return 200, CONTENT_TYPES[fmt], variant.html
    return 200, CONTENT_TYPES[fmt], dump_json(variant.resource)


def add_cli(subparsers: Any) -> Any:
    """Add ``report variants`` to the ``gateway`` command's subparsers."""
    report = subparsers.add_parser("report", help="report tools (language variants)")
    sub = report.add_subparsers(dest="report_command", required=True)
    variants = sub.add_parser(
        "variants",
        help="a report's language variant (zh-Hans, zh-Hant-HK, en, bilingual) and its PDF",
        description="REPORT.json is a FHIR DiagnosticReport or a Bundle holding one. "
        "English narrative only comes from --english (the partner radiologist's report, "
        "linked by the translation-of extension); without it the English part is pending.",
    )
    variants.add_argument("report", metavar="REPORT.json", help="the report ('-' for stdin)")
    variants.add_argument(
        "--lang",
        choices=_CLI_LANGS,
        help="the variant (default: the --for partner's preference, else bilingual)",
    )
    variants.add_argument(
        "--for",
        dest="partner",
        metavar="PARTNER",
        help="the receiving institution (facility code or name): its report_variant in "
        "the network picks the variant",
    )
    variants.add_argument("--english", metavar="EN.json", help="the linked English report")
    variants.add_argument("--pdf", metavar="OUT.pdf", help="write the rendered report as PDF")
    variants.add_argument("--html", metavar="OUT.html", help="write the rendered report as HTML")
    variants.add_argument(
        "-o", "--output", metavar="OUT.json", help="write the variant (default: stdout)"
    )
    variants.set_defaults(func=cmd_report_variants)
    return report


def cmd_report_variants(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = sys.stdin.buffer.read() if args.report == "-" else Path(args.report).read_bytes()
        english = Path(args.english).read_bytes() if args.english else None
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    maker = variants_for(settings)
    lang = args.lang or (maker.preferred(args.partner) if args.partner else BILINGUAL)
    variant = maker.variant(report, lang, english)
    for note in variant.notes:
        print(f"note: {note}", file=sys.stderr)
    written = []
    for path, data in ((args.pdf, variant.pdf), (args.html, variant.html)):
        if path:
            _write(Path(path), data)
            written.append(path)
    if args.output:
        _write(Path(args.output), dump_json(variant.resource))
        written.append(args.output)
    elif not written:
        sys.stdout.buffer.write(dump_json(variant.resource))
    if written:
        print(f"{variant.lang} variant: {', '.join(written)}", file=sys.stderr)
    return 0


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
