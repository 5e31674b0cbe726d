"""The ``gateway`` command.

    gateway convert PATH... [--format auto|hl7v2] [-o OUT]   records → FHIR Bundles
    gateway demo                                             the demo network, end to end
    gateway serve [--host H] [--port P]                      the HTTP API
    gateway config                                           effective settings

Errors are one readable line each on stderr; the exit code is 0 when every record
converted, 1 when some failed, 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from . import __version__
from .config import Settings
from .envelope import Record
from .errors import GatewayError
from .pipeline import Converter

__all__ = ["main"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\-]+")
# Files taken from a folder (a file named on the command line is always read).
RECORD_SUFFIXES = frozenset({".hl7", ".er7", ".txt", ".msg", ".dat", ".mllp", ""})


class Progress:
    """A one-line progress bar on a terminal; silent when stderr is not one."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.done = self.failed = 0

    def step(self, record: Record) -> None:
        self.done += 1
        self.failed += 0 if record.ok else 1
        if self.enabled:
            width = 30
            filled = width * self.done // max(self.total, 1)
            self.stream.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                f"messages, {self.failed} failed"
            )
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _inputs(paths: Iterable[str]) -> Iterator[tuple[str, bytes]]:
    for name in paths:
        if name == "-":
            yield "<stdin>", sys.stdin.buffer.read()
            continue
        path = Path(name)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if not child.name.startswith(".") and child.suffix.lower() in RECORD_SUFFIXES:
                    yield str(child), child.read_bytes()
        else:
            yield str(path), path.read_bytes()


def _count_messages(data: bytes) -> int:
    # Cheap estimate for the progress bar: segment starts with MSH.
    return max(1, len(re.findall(rb"(?:^|[\r\n\x0b])(?:\xef\xbb\xbf)?MSH", data)))


def _output_name(record: Record, used: set[str]) -> str:
    base = _SAFE_NAME.sub("_", record.control_id or f"message-{record.index}").strip("_")
    name, n = f"{base}.json", 1
    while name in used:
        n += 1
        name = f"{base}-{n}.json"
    used.add(name)
    return name


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    converter = Converter(settings)
    try:
        inputs = list(_inputs(args.paths))
    except OSError as exc:
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else None
    to_dir = out is not None and (out.is_dir() or args.output.endswith(("/", "\\")))
    total = sum(_count_messages(data) for _, data in inputs)
    progress = Progress(total, sys.stderr, args.progress or (sys.stderr.isatty() and total > 1))
    records: list[Record] = []
    used: set[str] = set()
    for source, data in inputs:
        for record in converter.iter_convert(data, source, args.format, trace=args.unmapped):
            records.append(record)
            progress.step(record)
            if record.bundle_json is not None and to_dir:
                assert out is not None
                out.mkdir(parents=True, exist_ok=True)
                (out / _output_name(record, used)).write_bytes(record.bundle_json)
    progress.close()
    good = [r for r in records if r.ok]
    for record in records:
        for issue in record.issues:
            if not args.quiet or issue.severity != "warning":
                print(issue.line(), file=sys.stderr)
        if record.unmapped:
            print(
                f"info: {record.label}: not mapped: {', '.join(record.unmapped)}", file=sys.stderr
            )
    if not to_dir and good:
        if out is not None and len(good) > 1:
            print(
                f"error: {len(good)} messages converted but -o {out} is a file; "
                "give a directory (ending in /) for several messages",
                file=sys.stderr,
            )
            return 2
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(good[0].bundle_json or b"")
        elif len(good) == 1:
            sys.stdout.buffer.write(good[0].bundle_json or b"")
        else:  # several Bundles on stdout: one compact JSON document per line
            import orjson

            for record in good:
                sys.stdout.buffer.write(orjson.dumps(record.bundle) + b"\n")
    where = f" into {out}" if out is not None else ""
    print(
        f"converted {len(good)}, failed {len(records) - len(good)} "
        f"(of {len(records)} messages in {len(inputs)} files){where}",
        file=sys.stderr,
    )
    return 0 if len(good) == len(records) else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, sys.stdout)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .api import create_app

    app = create_app(settings)
    host = args.host or settings.host
    port = args.port or settings.port
    tokens = settings.api_token_file or settings.secrets_dir / "api-tokens"
    print(
        f"gateway API on http://{host}:{port} (GATEWAY_HOME={settings.home}); "
        f"bearer tokens: {tokens}",
        file=sys.stderr,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    for name, value in vars(settings).items():
        print(f"{name} = {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="FHIR interoperability gateway (HL7 v2 → FHIR R4)."
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--home", help="GATEWAY_HOME (default: $GATEWAY_HOME or ~/.fhir-gateway)")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert records to FHIR transaction Bundles")
    convert.add_argument("paths", nargs="+", help="files or folders ('-' for stdin)")
    convert.add_argument("--format", default="auto", choices=["auto", "hl7v2"])
    convert.add_argument("-o", "--output", help="output file (one message) or folder (many)")
    convert.add_argument("--progress", action="store_true", help="show progress even off a TTY")
    convert.add_argument("-q", "--quiet", action="store_true", help="hide warnings")
    convert.add_argument(
        "--unmapped",
        action="store_true",
        help="list, per message, the fields holding data that no mapping read",
    )
    convert.set_defaults(func=cmd_convert)

    demo = sub.add_parser("demo", help="run the demo network's records through the gateway")
    demo.set_defaults(func=cmd_demo)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=cmd_serve)

    config = sub.add_parser("config", help="print the effective settings")
    config.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.home)
        code: int = args.func(args, settings)
        return code
    except GatewayError as exc:
        print(exc.issue.line(), file=sys.stderr)
        return 2
    except OSError as exc:  # an output that cannot be written, a folder that is a file, ...
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
