"""Issue 8: clients that trickle their headers or body are cut off (408, connection
closed) after api_header_timeout / api_body_timeout, while others are served."""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway import ConfigError, Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.live import live_server
from tests.api.test_app import TOKEN

REFERRAL = (
    Path(__file__).resolve().parents[2] / "examples/hl7v2/ref_i12_lax2_to_njmu2.hl7"
).read_bytes()
TIMEOUT = 1.0  # seconds, both timeouts, so the test is quick


@pytest.fixture(scope="module")
def port(settings: Settings, converter: Converter) -> Iterator[int]:
    quick = dataclasses.replace(settings, api_header_timeout=TIMEOUT, api_body_timeout=TIMEOUT)
    app = create_app(quick, converter, TokenSet([TOKEN]))
    with live_server(app, quick) as port:
        yield port


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def _trickle(sock: socket.socket, data: bytes, seconds: float) -> bytes:
    """Send ``data`` a byte at a time, 0.2 s apart, for at most ``seconds``; then read
    what the server answered until it closes the connection (b"" if it said nothing)."""
    end = time.monotonic() + seconds
    try:
        for byte in data:
            if time.monotonic() > end:
                break
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    except OSError:  # the server closed the connection while we were sending
        pass
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    return received


def _request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /convert HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: x-application/hl7-v2+er7\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _all_trickle(socks: list[socket.socket], data: bytes, seconds: float) -> list[bytes]:
    """Five slow clients at once, each in its own thread."""
    with ThreadPoolExecutor(len(socks)) as pool:
        answers = list(pool.map(lambda s: _trickle(s, data, seconds), socks))
    for sock in socks:
        sock.close()
    return answers


def test_trickling_headers_get_408_and_are_closed(port: int) -> None:
    socks = [_connect(port) for _ in range(5)]
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(_all_trickle, socks, _request(port, REFERRAL), 3 * TIMEOUT)
        time.sleep(TIMEOUT / 2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            assert client.get("/health").status_code == 200  # others are served meanwhile
        answers = slow.result()
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"request.timeout" in answer
    assert time.monotonic() - started < 3 * TIMEOUT + 2


def test_a_silent_connection_is_closed(port: int) -> None:
    with _connect(port) as sock:
        started = time.monotonic()
        assert sock.recv(100) == b""  # closed, nothing said: no request was begun
        assert TIMEOUT - 0.2 < time.monotonic() - started < TIMEOUT + 3


def test_a_trickling_body_gets_408_and_others_are_served(port: int) -> None:
    request = _request(port, REFERRAL)
    head, body = request.split(b"\r\n\r\n", 1)
    socks = [_connect(port) for _ in range(5)]
    for sock in socks:
        sock.sendall(head + b"\r\n\r\n" + body[:10])
    # meanwhile a well-behaved client is served
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        resp = client.post(
            "/convert",
            content=REFERRAL,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "x-application/hl7-v2+er7",
            },
        )
        assert resp.status_code == 200
    # a byte every 0.2 s never leaves a gap of TIMEOUT, but the whole body is late
    answers = _all_trickle(socks, body[10:], 3 * TIMEOUT)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
        assert b"request.timeout" in answer


def test_a_slow_but_steady_request_is_served(port: int) -> None:
    """Headers and body in a few pieces, each well within the timeouts."""
    request = _request(port, REFERRAL)
    with _connect(port) as sock:
        for start in range(0, len(request), len(request) // 3 + 1):
            sock.sendall(request[start : start + len(request) // 3 + 1])
            time.sleep(TIMEOUT / 5)
        answer = sock.recv(100)
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("refused", ["no token", "too large"])
def test_the_body_of_an_answered_request_cannot_trickle_forever(port: int, refused: str) -> None:
    """A 401 or 413 is sent before the body is read; h11 would then read and discard the
    rest of the body for as long as the client kept sending it."""
    length = 10 * 1024 * 1024 if refused == "too large" else len(REFERRAL)
    token = "" if refused == "no token" else f"Authorization: Bearer {TOKEN}\r\n"
    head = (
        f"POST /convert HTTP/1.1\r\nHost: gw\r\n{token}"
        f"Content-Type: x-application/hl7-v2+er7\r\nContent-Length: {length}\r\n\r\n"
    )
    with _connect(port) as sock:
        sock.sendall(head.encode() + REFERRAL[:10])
        started = time.monotonic()
        answer = _trickle(sock, REFERRAL[10:], 4 * TIMEOUT)
    assert answer.startswith(b"HTTP/1.1 401 " if refused == "no token" else b"HTTP/1.1 413 ")
    assert time.monotonic() - started < 4 * TIMEOUT  # closed at TIMEOUT, not after the trickle


def test_the_timeouts_are_settings(tmp_path: Path) -> None:
    env = {"GATEWAY_API_HEADER_TIMEOUT": "2.5", "GATEWAY_API_BODY_TIMEOUT": "45"}
    loaded = Settings.load(home=tmp_path, env=env)
    assert (loaded.api_header_timeout, loaded.api_body_timeout) == (2.5, 45.0)
    defaults = Settings.load(home=tmp_path, env={})
    assert (defaults.api_header_timeout, defaults.api_body_timeout) == (10.0, 30.0)
    for bad in ("soon", "0", "-1"):
        with pytest.raises(ConfigError, match="api_body_timeout"):
            Settings.load(home=tmp_path, env={"GATEWAY_API_BODY_TIMEOUT": bad})
