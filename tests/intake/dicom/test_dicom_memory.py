"""RESOURCE BOUND (issue 8, "Done when"): a ~6 MB zip whose five members each carry a
200 MB private OB element converts in under 300 MB peak RSS, through the CLI and the
API, each run as a real subprocess. Elements beyond ``dicom_max_element_bytes`` are
skipped unread (pydicom's ``defer_size``: a zip member is streamed past them), so no
member is ever held whole.

The archive is written by hand from one pre-compressed 64 KiB block repeated (each
deflate segment ends with a full flush, so segments join into one valid stream): a
second or so to make, and the members still compress under the 200:1 zip-bomb guard.
The whole module takes a few seconds (the API server's start-up is most of it).
"""

from __future__ import annotations

import json
import random
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from pathlib import Path

import pytest
from pydicom.dataelem import DataElement

from tests.golden.dicom.make_studies import part10, wang_wei

LIMIT_KB = 300 * 1024  # the bound, in the kB that ru_maxrss and VmHWM count
MEMBERS = 5
BLOCK = 64 * 1024
BLOCKS = 200 * 1024 * 1024 // BLOCK  # 200 MiB per private element
PRIVATE = 0x00291010  # (0029,1010): a private OB element, as vendors' blobs are


def _block() -> bytes:
    """64 KiB of zeros with a random byte every 1000: ~177:1 under deflate."""
    rnd = random.Random(8)
    block = bytearray(BLOCK)
    for k in range(0, BLOCK, 1000):
        block[k] = rnd.randrange(1, 256)
    return bytes(block)


def _segment(data: bytes) -> bytes:
    """Raw deflate blocks of ``data`` that refer to nothing before them."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush(zlib.Z_FULL_FLUSH)


def _member(number: int, block: bytes, packed_block: bytes) -> tuple[bytes, int, int]:
    """(deflated bytes, CRC-32, size) of an instance of 王伟's chest CT whose private
    element holds BLOCKS blocks."""
    ds = wang_wei(number=number)
    ds.add(DataElement(0x00290010, "LO", "GATEWAY TEST"))  # private creator
    head = part10(ds) + struct.pack("<HH2sHL", 0x0029, 0x1010, b"OB", 0, BLOCK * BLOCKS)
    crc = zlib.crc32(head)
    for _ in range(BLOCKS):
        crc = zlib.crc32(block, crc)
    final = zlib.compressobj(6, zlib.DEFLATED, -15).flush()  # an empty last block
    return _segment(head) + packed_block * BLOCKS + final, crc, len(head) + BLOCK * BLOCKS


def _zip(path: Path) -> None:
    block = _block()
    packed = _segment(block)
    local = bytearray()
    central = bytearray()
    for n in range(1, MEMBERS + 1):
        data, crc, size = _member(n, block, packed)
        name = f"DICOM/IM{n}.dcm".encode()
        offset = len(local)
        fields = (20, 0, 8, 0, 0x21, crc, len(data), size, len(name))
        local += struct.pack("<4sHHHHHLLLHH", b"PK\x03\x04", *fields, 0) + name + data
        central += struct.pack("<4sH", b"PK\x01\x02", 20)
        central += struct.pack("<HHHHHLLLHHHHHLL", *fields, 0, 0, 0, 0, 0, offset) + name
    end = struct.pack(
        "<4sHHHHLLH", b"PK\x05\x06", 0, 0, MEMBERS, MEMBERS, len(central), len(local), 0
    )
    path.write_bytes(bytes(local + central + end))


@pytest.fixture(scope="module")
def bulky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bulky") / "bulky.zip"
    _zip(path)
    assert 4 << 20 < path.stat().st_size < 8 << 20  # megabytes in, a gigabyte inside
    return path


def _gateway(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "gateway", "--home", str(home), *args]


def _check(bundle: dict[str, object]) -> None:
    [study] = [
        e["resource"]  # type: ignore[index]
        for e in bundle["entry"]  # type: ignore[attr-defined]
        if e["resource"]["resourceType"] == "ImagingStudy"  # type: ignore[index]
    ]
    assert study["numberOfInstances"] == MEMBERS


# `python -m gateway ...`, reporting its own peak RSS when it exits. Not the rusage of the
# child: Linux carries the high-water mark of the memory a child was forked from (this
# test process, a few hundred MB by now) across exec into its ru_maxrss. VmHWM counts
# only what the process touched after exec.
_REPORTING = """
import atexit, runpy, sys
peak = sys.argv.pop(1)
def report():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            open(peak, "w").write(line.split()[1])
atexit.register(report)
runpy.run_module("gateway", run_name="__main__", alter_sys=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_cli_converts_the_zip_under_300_mb(bulky: Path, tmp_path: Path) -> None:
    peak_file = tmp_path / "peak"
    command = _gateway(tmp_path / "home", "convert", str(bulky))
    command[1:3] = ["-c", _REPORTING, str(peak_file)]  # python -c ... PEAK --home ...
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    log = done.stderr.decode("utf-8", "replace")
    assert done.returncode == 0, log
    peak = int(peak_file.read_text())
    assert peak < LIMIT_KB, f"CLI peak RSS {peak // 1024} MB"
    assert "5 element(s) larger than" in log and "(0029,1010)" in log  # counted, not read
    _check(json.loads(done.stdout))
    print(f"CLI peak RSS {peak // 1024} MB")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _peak_kb(pid: int) -> int:
    """The process's peak RSS in kB (VmHWM), read while it runs."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_memory_api_converts_the_zip_under_300_mb(bulky: Path, tmp_path: Path) -> None:
    home, port = tmp_path / "home", _free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        _gateway(home, "serve", "--port", str(port)), stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        token = (home / "secrets" / "api-tokens").read_text().split()[0]
        request = urllib.request.Request(
            f"{base}/convert",
            data=bulky.read_bytes(),
            headers={"Content-Type": "application/zip", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            _check(json.loads(response.read()))
        peak = _peak_kb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert peak < LIMIT_KB, f"API server peak RSS {peak // 1024} MB"
    print(f"API server peak RSS {peak // 1024} MB")
