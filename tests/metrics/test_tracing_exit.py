"""OTLP tracing at exit (docs/metrics.md, "Tracing"): with the collector unreachable, a
short command such as ``gateway convert`` of one file no longer waits ~10 s at exit for
the exporter's retries (the wait is bounded: ``_tracing.SHUTDOWN_SECONDS``); with the
collector up, the spans still reach it before the process ends."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

pytest.importorskip(
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    reason="OTLP tracing needs the `tracing` extra (pip install 'fhir-gateway[tracing]')",
)

from gateway.metrics import _tracing
from tests.conftest import REPO

MESSAGE = REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7"


class Run:
    """One `gateway convert` of one file: its exit status, output, and how long the
    process lived after printing its summary (the conversion done: only the exit left)."""

    def __init__(self, tmp_path: Path, tracing: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "OTEL_"))}
        env["GATEWAY_HOME"] = str(tmp_path / "home")
        env.update(tracing)
        out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.json"
        lines: list[str] = []
        done_at = None
        with (
            out.open("wb") as stdout,
            subprocess.Popen(
                [sys.executable, "-m", "gateway", "convert", str(MESSAGE)],
                env=env,
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
            ) as proc,
        ):
            assert proc.stderr is not None
            for line in proc.stderr:  # stderr is line-buffered: each line as it is written
                lines.append(line)
                if line.startswith("converted ") and done_at is None:
                    done_at = time.monotonic()
            self.returncode = proc.wait(timeout=120)
        ended = time.monotonic()
        self.stderr = "".join(lines)
        self.stdout = out.read_bytes()
        assert done_at is not None, self.stderr
        self.exit_seconds = ended - done_at


def _closed_port() -> int:
    """A local port nothing listens on: connections to it are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_collector_does_not_hold_a_short_command_at_exit(
    tmp_path: Path,
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}/v1/traces"
    plain = Run(tmp_path, {})
    run = Run(tmp_path, {"GATEWAY_TRACING": "otlp", "GATEWAY_TRACING_ENDPOINT": endpoint})
    assert plain.returncode == 0 and run.returncode == 0, run.stderr
    assert run.stdout == plain.stdout  # the same Bundles
    assert "converted 1, failed 0" in run.stderr
    assert "the collector did not take the last spans within 2 s; dropped" in run.stderr
    # Timed from the summary line to the exit, so start-up under load does not count, and
    # beside the same command without tracing, so a loaded machine's slow teardown does not
    # either: the unbounded exporter held the exit ~8-10 s (its retry timeout), the bound
    # is SHUTDOWN_SECONDS (2 s).
    assert run.exit_seconds < plain.exit_seconds + 4.0, (run.exit_seconds, plain.exit_seconds)
    assert _tracing.SHUTDOWN_SECONDS <= 2.0


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that keeps the request bodies it receives."""

    bodies: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(self.rfile.read(size))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet


@pytest.fixture
def collector() -> Iterator[tuple[str, list[bytes]]]:
    _Collector.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", _Collector.bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_reachable_collector_receives_the_spans_before_exit(
    tmp_path: Path, collector: tuple[str, list[bytes]]
) -> None:
    endpoint, bodies = collector
    plain = Run(tmp_path, {})
    run = Run(tmp_path, {"GATEWAY_TRACING": "otlp", "GATEWAY_TRACING_ENDPOINT": endpoint})
    assert run.returncode == 0, run.stderr
    assert "did not take the last spans" not in run.stderr
    sent = b"".join(bodies)  # OTLP protobuf: span names and attribute values as bytes
    for stage in (b"intake", b"mapping", b"validation", b"serialise"):
        assert stage in sent
    assert b"fhir-gateway" in sent  # service.name
    # the collector took them at once: no wait beyond the untraced command's own exit
    assert run.exit_seconds < plain.exit_seconds + 4.0, (run.exit_seconds, plain.exit_seconds)
