"""``gateway serve --workers 2`` as an operator runs it: two API worker processes on one
port, whose stage histograms add up in /metrics whichever worker answers; a worker that
dies is started again without losing the counts; SIGTERM lets a request in flight
finish, then everything exits and the metrics directory is removed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO

HL7 = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
TOKEN = "workers-test-token-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workers(pid: int) -> set[int]:
    """The API worker processes of supervisor ``pid`` (its spawned children)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def _intake_count(http: httpx.Client) -> float:
    text = http.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_stage_duration_seconds_count" and sample.labels == {
                "stage": "intake"
            }:
                return sample.value
    return 0.0


def _wait(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} within {seconds} s")


def test_two_workers_share_the_port_the_metrics_and_drain_on_sigterm(tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    (home / "secrets").mkdir(parents=True)
    tmp.mkdir()
    (home / "secrets" / "api-tokens").write_text(TOKEN + "\n")
    (home / "secrets" / "api-tokens").chmod(0o600)  # a readable token file is refused
    port = _free_port()
    env = {**os.environ, "GATEWAY_HOME": str(home), "TMPDIR": str(tmp)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = (tmp_path / "serve.log").open("wb")
    command = [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/hl7-v2"}
    try:
        _wait(lambda: http.get("/health/ready").status_code == 200, 180, "not ready")
        _wait(lambda: len(_workers(proc.pid)) == 2, 30, "two workers not running")
        for _ in range(12):  # new connections: the kernel hands them to either worker
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as one:
                assert one.post("/convert", content=HL7, headers=headers).status_code == 200
        # Each scrape, whichever worker answers it, sums both workers' histograms.
        assert {_intake_count(http) for _ in range(6)} == {12.0}

        first = _workers(proc.pid)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: len(_workers(proc.pid) - {victim}) == 2, 120, "the worker not restarted")
        _wait(lambda: http.get("/health/ready").status_code == 200, 120, "not ready again")
        assert _intake_count(http) == 12.0  # the dead worker's observations still count

        # A request in flight when SIGTERM arrives is answered before the worker exits.
        body = HL7
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            sock.sendall(
                b"POST /convert HTTP/1.1\r\nHost: gw\r\nContent-Type: application/hl7-v2\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body[:100]
            )
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            sock.sendall(body[100:])
            answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert proc.wait(90) == 0
    finally:
        http.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert not _workers(proc.pid)
    assert not [p for p in tmp.iterdir() if p.name.startswith("gateway-metrics-")]
