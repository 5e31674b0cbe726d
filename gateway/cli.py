"""The ``gateway`` command.

    gateway convert PATH... [--format auto|hl7v2|dicom|cda] [-o OUT]   records → FHIR Bundles
    gateway report variants REPORT.json [--lang L] [--pdf OUT.pdf]    report language variants
    gateway demo                                             the demo network, end to end
    gateway serve [--host H] [--port P] [--workers N]        the HTTP API (+ MLLP: mllp_port)
    gateway dicom commit UID | pending | listen              DICOM listeners (C-STORE, STOW-RS)
    gateway listen [--port P]                                HL7 v2 over MLLP into the store
    gateway messages list|show|reprocess|prune               the message store
    gateway send PATH... [--to P] [--wait]                   store, convert, route, queue, deliver
    gateway route PATH...                                    which rule sends each record where
    gateway outbox list|show|stats|retry|replay|release      the queue to partner FHIR servers
    gateway work [--workers N]                               delivery worker processes (no API)
    gateway db upgrade                                       create or migrate the store
    gateway partners list|set|check                          partner FHIR servers
    gateway validate FILE... [--profile URL] [--json]        validate FHIR JSON resources/Bundles
    gateway referrals list|show|accept|reject|complete ID    referral status (inbound)
    gateway audit verify|export|sign-head|transfers          the audit trail (docs/audit.md)
    gateway users add|list|passwd|disable                    the operator console's users (/console)
    gateway config                                           effective settings

Errors are one readable line each on stderr; the exit code is 0 when every record
converted, 1 when some failed, 2 for usage or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

import orjson

from . import __version__, signing
from .alerts import add_cli as add_alerts_cli
from .audit import add_cli as add_audit_cli
from .config import Settings, exposed_secrets
from .console import add_cli as add_users_cli
from .datafiles import data_dir
from .delivery import add_cli as add_outbox_cli
from .delivery import add_work_cli
from .envelope import Record
from .errors import ConfigError, GatewayError
from .inbound import add_cli as add_inbound_cli
from .inputs import RECORD_SUFFIXES, DicomInput, input_files
from .intake import FORMATS, detect_format, with_paths
from .listeners import add_cli as add_listen_cli
from .listeners.dicom import add_cli as add_dicom_cli
from .listeners.dicom import start_dicom
from .logs import configure as configure_logs
from .outputs import output_stem
from .partners import add_cli as add_partners_cli
from .pipeline import Converter
from .policy import add_cli as add_policy_cli
from .processing import add_cli as add_reprocess_cli
from .progress import Progress
from .reports import add_cli
from .store import add_cli as add_store_cli
from .validate_cli import add_cli as add_validate_cli

__all__ = ["main"]


def _input_files(paths: Iterable[str]) -> list[str]:
    """The files named, and in named folders the record files (RECORD_SUFFIXES)."""
    return input_files(paths, RECORD_SUFFIXES)


def _output_name(record: Record, used: set[str]) -> str:
    """``<stem>.json``, with ``-2``, ``-3``... when an earlier record of the batch took
    it (compared case-blind: macOS and Windows file systems are)."""
    base = output_stem(record.control_id) if record.control_id else f"message-{record.index}"
    name, n = f"{base}.json", 1
    while name.casefold() in used:
        n += 1
        name = f"{base}-{n}.json"
    used.add(name.casefold())
    return name


class _Sink:
    """Where converted Bundles go: a folder (one file per message), one file, or stdout
    (one Bundle pretty-printed; several as one compact JSON document per line)."""

    def __init__(self, output: str | None, folder_input: bool = False) -> None:
        self.path = Path(output) if output else None
        # A folder given as input always writes into a folder: how many messages it holds
        # must not decide (one message made a file `out`, the next run with two refused it)
        self.to_dir = self.path is not None and (
            folder_input or self.path.is_dir() or str(output).endswith(("/", "\\"))
        )
        if self.to_dir and self.path is not None and self.path.exists() and not self.path.is_dir():
            raise _Usage(
                f"-o {self.path} is a file; a folder input writes one file per message into "
                "a folder: give another -o (it is created)"
            )
        self.count = 0
        self._used: set[str] = set()
        self._held: Record | None = None  # stdout: the first Bundle, until we know if more come

    def add(self, record: Record) -> None:
        assert record.bundle_json is not None
        self.count += 1
        if self.path is not None and self.to_dir:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / _output_name(record, self._used)).write_bytes(record.bundle_json)
        elif self.path is not None:
            if self.count > 1:
                # The file holds only the first Bundle: leave nothing that looks done.
                self.path.unlink(missing_ok=True)
                raise _Usage(
                    f"-o {self.path} is a file but there are several messages; "
                    "give a directory (ending in /); nothing was written"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(record.bundle_json)
        elif self.count == 1:
            self._held = record
        else:
            if self._held is not None:
                sys.stdout.buffer.write(orjson.dumps(self._held.bundle) + b"\n")
                self._held = None
            sys.stdout.buffer.write(orjson.dumps(record.bundle) + b"\n")

    def close(self) -> None:
        if self._held is not None and self._held.bundle_json is not None:
            sys.stdout.buffer.write(self._held.bundle_json)


class _Usage(Exception):
    """A mistake in how the command was called (exit code 2)."""


def cmd_convert(args: argparse.Namespace, settings: Settings) -> int:
    converter = Converter(settings)
    sender = converter.known_sender(args.sender) if args.sender else None
    files = _input_files(args.paths)
    if not files:
        print(
            "error: no input files (folders are searched for "
            f"{', '.join(sorted(s for s in RECORD_SUFFIXES if s))} files)",
            file=sys.stderr,
        )
        return 2
    collector = BatchGC()
    try:
        sink = _Sink(args.output, any(p != "-" and Path(p).is_dir() for p in args.paths))
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size = _total_size(files)
    show = args.progress or (sys.stderr.isatty() and (len(files) > 1 or (size or 0) > _CHUNK))
    progress = Progress(len(files), sys.stderr, show, size)

    def report(records: Iterable[Record], names: Sequence[str] = ()) -> None:
        """``names``: the inputs' paths, printed beside the references messages give
        their files (``file 1a2b3c4d``): the operator typed them, no one else sees them."""
        for record in records:
            collector.record()
            progress.record(record)
            for issue in record.issues:
                if not args.quiet or issue.severity != "warning":
                    progress.say(with_paths(issue.line(), names))
            if record.unmapped:
                progress.say(f"info: {record.label}: not mapped: {', '.join(record.unmapped)}")
            if record.ok:
                sink.add(record)

    # DICOM files are converted after the others, whole studies at a time: a study's
    # instances may be spread over many files and folders (Converter.convert_dicom_inputs).
    dicom: list[DicomInput] = []
    try:
        for name in files:
            try:
                source, opened = _open(name)
            except OSError as exc:
                progress.close()
                print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
                return 2
            with opened as fp:
                head = _read_chunk(fp, progress)
                told = detect_format(head) if args.format == "auto" else args.format
                if told == "hl7v2":  # streamed: one message at a time, whatever the size
                    chunks = _chunks(head, fp, progress)
                    report(converter.iter_convert_stream(chunks, source, trace=args.unmapped))
                    progress.file_done()
                    continue
                if told == "dicom" and name != "-":  # read again with its study
                    progress.read(-len(head))
                    dicom.append(DicomInput(source, Path(name)))
                    progress.file_done()
                    continue
                data = head + b"".join(_chunks(b"", fp, progress))
            kind = detect_format(data) if args.format == "auto" else args.format
            if kind == "dicom":
                progress.read(-len(data))
                dicom.append(DicomInput(source, data=data))
            else:
                report(converter.iter_convert(data, source, kind, trace=args.unmapped))
            progress.file_done()
        if dicom:
            records = converter.convert_dicom_inputs(
                dicom, trace=args.unmapped, sender=sender, on_read=progress.read
            )
            report(records, [item.name for item in dicom])
    except _Usage as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        collector.close()
    progress.close()
    sink.close()
    where = f" into {sink.path}" if sink.path is not None else ""
    print(
        f"converted {sink.count}, failed {progress.failed} "
        f"(of {progress.messages} records in {len(files)} files){where}",
        file=sys.stderr,
    )
    return 0 if progress.failed == 0 else 1


_CHUNK = 1 << 20  # bytes read at a time from an input


def _open(name: str) -> tuple[str, AbstractContextManager[BinaryIO]]:
    if name == "-":  # stdin is the process's: read, not closed
        return "<stdin>", contextlib.nullcontext(sys.stdin.buffer)
    return name, open(name, "rb")  # closed by the caller's with


def _read_chunk(fp: BinaryIO, progress: Progress) -> bytes:
    data = fp.read(_CHUNK)
    progress.read(len(data))
    return data


def _chunks(head: bytes, fp: BinaryIO, progress: Progress) -> Iterator[bytes]:
    """``head``, then the rest of ``fp`` chunk by chunk (counted as read)."""
    if head:
        yield head
    while data := _read_chunk(fp, progress):
        yield data


def _total_size(files: list[str]) -> int | None:
    """The inputs' bytes (for the progress bar's share and ETA); None with stdin."""
    if "-" in files:
        return None
    try:
        return sum(os.stat(name).st_size for name in files)
    except OSError:
        return None  # the read reports it


class BatchGC:
    """The garbage collector tuned for a batch (``gateway convert``).

    What start-up builds (mappings, terminology, the network) and what the first records
    build lazily (profiles' check plans, compiled paths, the validator's skeletons) lives
    as long as the process; collections that walk it were the long pauses (up to 400 ms).
    So: ``gc.freeze()`` once the converter is built, the collector off while the first
    record warms up, and ``gc.freeze()`` again after records 1, 10, 100 and 1,000 (new
    message types warm up later); after that, a larger first threshold runs the young
    collection less often and full collections wait for more survivors. Objects frozen
    are still freed by reference counting; only a reference cycle that becomes garbage
    after a freeze waits for the process's end. bench/bench_memory.py measures the
    longest pause."""

    THRESHOLDS = (10_000, 20, 50)
    FREEZE_AFTER = frozenset({1, 10, 100, 1_000})  # records

    def __init__(self) -> None:
        self.records = 0
        self._before = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.THRESHOLDS)
        gc.disable()

    def record(self) -> None:
        self.records += 1
        if self.records in self.FREEZE_AFTER:
            gc.freeze()
            gc.enable()

    def close(self) -> None:
        """Back to the interpreter's settings (for callers that go on: tests, send). The
        frozen objects go back too: ``gc.get_referrers`` and cycle collection do not see
        a frozen object, so a process left frozen misleads whatever runs next."""
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*self._before)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .demo import run_demo

    return run_demo(settings, sys.stdout)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .api import Supervisor, create_app, server_config
    from .listeners import serve_gateway

    host = args.host or settings.host
    port = args.port or settings.port
    _can_serve(settings, host, port)  # before the banner: a start that fails says only why
    # --workers N: N API processes, this one runs the listeners and delivery (api/_server.py)
    workers = Supervisor(settings, host, port, args.workers) if args.workers > 1 else None
    app = create_app(settings) if workers is None else None
    tokens = settings.effective_token_file
    print(
        f"gateway API on http://{host}:{port} (GATEWAY_HOME={settings.home}"
        f"{f'; {args.workers} workers' if workers else ''}); bearer tokens: {tokens}",
        file=sys.stderr,
    )
    # uvicorn's own lines go through the gateway's handler and format too.
    configure_logs(settings.log_level, settings.log_format, loggers=("gateway", "uvicorn"))
    dicom = start_dicom(settings, app)  # study completer; C-STORE SCP when dicom_port is set
    try:
        # The store is migrated at start; the MLLP listener runs beside the API when
        # mllp_port is set (gateway/listeners).
        config = server_config(app, settings, host=host, port=port) if app else None
        asyncio.run(serve_gateway(config, settings, workers))
    finally:
        dicom.stop()
    return 0


def _can_serve(settings: Settings, host: str, port: int) -> None:
    """Refuse to start, in one line, what would fail at once or at the first send: a
    partner whose token, certificate or CA file is not there (a hand-edited partners
    file), a port another process holds (uvicorn's own error came after the banner), an
    API token file that is missing, empty or not private (with --workers each worker
    would refuse it only after the banner), and any other secret file group or others
    may read (a partner's token or mTLS key, the inbound partner tokens, the alerts'
    webhook token and SMTP password: config.not_private)."""
    import socket

    from .api import load_tokens
    from .partners import configured_partners, exposed_credentials, missing_credentials

    load_tokens(settings)
    if open_secrets := exposed_secrets(settings):  # the inbound partner tokens, alert secrets
        raise ConfigError("bad-setting", "; ".join(f"{name}: {why}" for name, why in open_secrets))
    for partner in configured_partners(settings).values():
        if missing := missing_credentials(partner):
            raise ConfigError(
                "partner-auth",
                f"partner {partner.key}: no such file: {'; '.join(missing)} (gateway "
                "partners list shows each partner's files)",
            )
        if exposed := exposed_credentials(partner):  # its token or mTLS key
            raise ConfigError("partner-auth", f"partner {partner.key}: {'; '.join(exposed)}")
    for family, kind, proto, _, address in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        with socket.socket(family, kind, proto) as probe:
            # as uvicorn binds: a port left in TIME_WAIT by the last run is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(exc.errno, f"port {port} on {host} is in use") from None
                raise


def _pseudonyms(settings: Settings, patient: str) -> tuple[str, ...]:
    """For `gateway audit export --patient SYSTEM|VALUE`: the identifier's keyed
    pseudonym, under which policy decisions and consents name their patient (never by
    the identifier). Only with a pseudonym key on file: an export never makes one."""
    from .audit import PSEUDONYM
    from .policy import policy_key, pseudonym

    system, bar, value = patient.rpartition("|")
    if not (bar and system and value) or system == PSEUDONYM:
        return ()
    path = settings.policy_key_file or settings.secrets_dir / "policy-key"
    if not (os.environ.get("GATEWAY_POLICY_KEY") or path.exists()):
        return ()
    return (f"{PSEUDONYM}|{pseudonym(policy_key(settings), system, value)}",)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    """Each setting as it is in effect: a default that stands for a file or database
    shows that file (and says it is the default), not None."""
    defaults = _file_defaults(settings)
    for name, value in vars(settings).items():
        if value is None and name in defaults:
            value = defaults[name]
        print(f"{name} = {value}")
    return 0


def _file_defaults(settings: Settings) -> dict[str, str]:
    """What the file and database settings left unset stand for: the paths the stages
    fall back to (gateway/store, policy, inbound, delivery), shown as defaults."""
    seeds, secrets = data_dir("seeds"), settings.secrets_dir
    key = f"{secrets / 'policy-key'} (default: $GATEWAY_HOME/secrets)"
    if os.environ.get("GATEWAY_POLICY_KEY"):
        key = "not used: GATEWAY_POLICY_KEY is set and wins"  # the key itself never shown
    return {
        "api_token_file": f"{settings.effective_token_file} (default: $GATEWAY_HOME/secrets)",
        "database_url": f"sqlite:///{settings.home / 'gateway.db'} (default: $GATEWAY_HOME)",
        "policy_dir": f"{data_dir('mappings') / 'policy'} (default)",
        "policy_agreements": f"{seeds / 'agreements.yaml'} (default)",
        "policy_key_file": key,
        "inbound_token_file": f"{secrets / 'partner-tokens'} (default: $GATEWAY_HOME/secrets)",
        "delivery_routes": f"{seeds / 'routes.yaml'} (default)",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="FHIR interoperability gateway (HL7 v2, DICOM, CDA → FHIR R4).",
    )
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--home", help="GATEWAY_HOME (default: $GATEWAY_HOME or ~/.fhir-gateway)")
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="convert records to FHIR transaction Bundles")
    convert.add_argument("paths", nargs="+", help="files or folders ('-' for stdin)")
    convert.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS],
        help="the input format (default auto: told from each file's bytes); name it for a "
        "file the bytes do not tell, e.g. DICOM JSON (dicom) or a CDA document (cda)",
    )
    convert.add_argument("-o", "--output", help="output file (one message) or folder (many)")
    convert.add_argument(
        "--sender",
        help="facility code of the hospital that sent DICOM studies which name no "
        "institution or accession issuer (e.g. LAX2 for a Lai'an PACS export)",
    )
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

    serve = sub.add_parser(
        "serve",
        help="run the HTTP API",
        description="Run the HTTP API (docs at /docs, /redoc; description at /openapi.json), "
        "and the MLLP and DICOM listeners when mllp_port / dicom_port are set. Every route "
        "but /health and /metadata needs a Bearer token from the token file "
        "(`gateway config` shows it).",
    )
    serve.add_argument(
        "--host", default=None, help="address to listen on (default: the host setting, 127.0.0.1)"
    )
    serve.add_argument(
        "--port", type=int, default=None, help="port to listen on (default: the port setting, 8080)"
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="API worker processes (default 1); with more, this process runs the listeners "
        "and delivery and the workers only the API (docs/deployment.md)",
    )
    serve.set_defaults(func=cmd_serve)

    add_cli(sub)  # gateway report variants
    add_policy_cli(sub)  # gateway policy check|decisions|show, gateway consent import|list|withdraw
    add_listen_cli(sub)  # gateway listen
    add_reprocess_cli(add_store_cli(sub))  # gateway messages ..., gateway db upgrade
    add_outbox_cli(sub)  # gateway outbox list|show|stats|retry|replay|release, send, route
    add_work_cli(sub)  # gateway work [--workers N]: delivery worker processes, no API
    add_partners_cli(sub)  # gateway partners list|set|check
    add_inbound_cli(sub)  # gateway referrals list|show|accept|reject|complete|notify, inbound token
    add_dicom_cli(sub)  # gateway dicom commit / pending / listen
    signing.add_cli(sub)  # gateway keys init, sign, verify
    add_validate_cli(sub)  # gateway validate FILE... [--profile URL] [--json]
    add_audit_cli(sub, _pseudonyms)  # gateway audit verify|export|sign-head|transfers
    add_alerts_cli(sub)  # gateway alerts list|check|test-notify
    add_users_cli(sub)  # gateway users add|list|passwd|disable (the console's users)

    config = sub.add_parser("config", help="print the effective settings")
    config.set_defaults(func=cmd_config)
    return parser


def _os_error_line(exc: OSError) -> str:
    """One line for an OS error no command caught: a file (an output that cannot be
    written, a folder that is a file, an input that is missing) or a socket (a port that
    another process holds). Which of read or write failed is not known here."""
    reason = exc.strerror or str(exc)
    if exc.filename:
        verb = "write" if exc.errno in _WRITE_ERRNOS else "read or write"
        return f"error: cannot {verb} {exc.filename}: {reason}"
    if exc.errno == errno.EADDRINUSE:  # `gateway listen`/`serve` twice on one port
        return f"error: {reason} (is another gateway listen or serve running on it?)"
    return f"error: {reason}"


# errnos that only a write gives: a read never sees these
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EISDIR, errno.EEXIST, errno.EDQUOT})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.load(args.home)
        configure_logs(settings.log_level, settings.log_format)
        code: int = args.func(args, settings)
        return code
    except GatewayError as exc:
        print(exc.issue.line(), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `gateway messages show 5 | head`: the reader has gone
        with contextlib.suppress(OSError):  # and Python's own flush at exit must not fail
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        print(_os_error_line(exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
