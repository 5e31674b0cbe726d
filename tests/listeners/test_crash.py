"""``gateway listen`` killed with SIGKILL in the middle of a stream and started again:
every message it acknowledged is in the store, and the sender's resend of the rest
(and of the acknowledged ones) is stored once."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from gateway.store import MessageFilter, Store

from .mllp_client import Client, example, segments, with_control_id

COUNT = 200


def start(home: Path, url: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "GATEWAY_DATABASE_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "--home", str(home), "listen", "--port", "0"],
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline().decode()
        found = re.search(r"MLLP listener on [\d.]+:(\d+)", line)
        if found:
            # the rest of its log is read (and dropped) so that the pipe never fills
            threading.Thread(target=_drain, args=(proc,), daemon=True).start()
            return proc, int(found.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    proc.stderr.close()
    raise AssertionError("gateway listen did not start")


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stderr is not None
    with proc.stderr:
        for _ in proc.stderr:
            pass


def test_sigkill_mid_stream_loses_no_acknowledged_message(store_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    base = example("ref_i12_lax2_to_njmu2.hl7")
    messages = [with_control_id(base, f"K{n:04d}") for n in range(COUNT)]
    proc, port = start(home, store_url)
    acked: list[str] = []
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def stream() -> None:  # the sender does not wait for ACKs: they come back meanwhile
        try:
            for message in messages:
                sock.sendall(b"\x0b" + message + b"\x1c\x0d")
        except OSError:
            pass  # the listener died under us

    sender = threading.Thread(target=stream, daemon=True)
    sender.start()
    buffer = b""
    try:
        while len(acked) < 60:
            chunk = sock.recv(65536)
            assert chunk, "the listener hung up before the kill"
            buffer += chunk
            while b"\x1c\x0d" in buffer:
                frame, _, buffer = buffer.partition(b"\x1c\x0d")
                msa = segments(frame[1:], "gb18030")["MSA"]
                assert msa[1] == "AA"
                acked.append(msa[2])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        sock.close()
        sender.join(30)
    assert proc.returncode == -signal.SIGKILL

    store = Store.open(store_url)
    for control in acked:
        assert len(store.find(MessageFilter(control_id=control)).items) == 1, control
    before = store.count()
    assert len(acked) <= before < COUNT  # killed mid-stream indeed

    proc, port = start(home, store_url)
    try:
        client = Client(port)
        for message in messages:  # the sender resends everything it is unsure of, and more
            assert segments(client.call(message), "gb18030")["MSA"][1] == "AA"
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0
    assert store.count() == COUNT
    for n in range(COUNT):
        assert len(store.find(MessageFilter(control_id=f"K{n:04d}")).items) == 1
    store.close()
