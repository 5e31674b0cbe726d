"""A plain MLLP client over a real TCP socket, and an MLLP listener run on a thread of
its own, for the listener tests."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
import threading
from pathlib import Path

from gateway import Converter, Settings
from gateway.listeners import mllp_running
from gateway.store import Store

REPO = Path(__file__).resolve().parents[2]
START, END = b"\x0b", b"\x1c\x0d"


def example(name: str, original_mode: bool = True) -> bytes:
    """An example message with CR segment ends; in original acknowledgement mode
    (MSH-15/16 emptied) unless asked otherwise."""
    data = (REPO / "examples" / "hl7v2" / name).read_bytes()
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"
    return data.replace(b"|AL|NE|", b"|||", 1) if original_mode else data


def with_control_id(data: bytes, control_id: str) -> bytes:
    """The message with another MSH-10 (ASCII, so a byte replacement is safe)."""
    msh, _, rest = data.partition(b"\r")
    fields = msh.split(b"|")
    fields[9] = control_id.encode()
    return b"|".join(fields) + b"\r" + rest


class Client:
    def __init__(
        self, port: int, timeout: float = 20, context: ssl.SSLContext | None = None
    ) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: socket.socket = (
            context.wrap_socket(sock, server_hostname="localhost") if context else sock
        )
        self.buffer = b""

    def send(self, message: bytes) -> None:
        self.sock.sendall(START + message + END)

    def ack(self) -> bytes:
        while END not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the listener closed the connection")
            self.buffer += chunk
        frame, _, self.buffer = self.buffer.partition(END)
        assert frame.startswith(START), frame[:20]
        return frame[1:]

    def call(self, message: bytes) -> bytes:
        self.send(message)
        return self.ack()

    def close(self) -> None:
        self.sock.close()


def segments(ack: bytes, codec: str = "utf-8") -> dict[str, list[str]]:
    """An ACK's segments by name, each split into fields (MSH-1 counted as HL7 does)."""
    out: dict[str, list[str]] = {}
    for line in ack.decode(codec).split("\r"):
        if line:
            fields = line.split("|")
            if fields[0] == "MSH":
                fields.insert(1, "|")
            out[fields[0]] = fields
    return out


class Listener:
    """``mllp_running`` on a thread with its own event loop."""

    def __init__(
        self, settings: Settings, store: Store, converter: Converter | None = None
    ) -> None:
        self.settings, self.store, self.converter = settings, store, converter
        self.port = 0
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Listener:
        self._thread.start()
        started = self._ready.wait(60)
        if self._error is not None:
            raise self._error
        assert started, "the MLLP listener did not start within 60 s"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        # A loaded machine may take long to stop it: a loop still running there must
        # not be closed from here (RuntimeError "Cannot close a running event loop",
        # hiding what was slow); it fails naming the stop.
        self._thread.join(120)
        assert not self._thread.is_alive(), "the MLLP listener did not stop within 120 s"
        self._loop.close()

    def _run(self) -> None:
        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                async with mllp_running(
                    self.settings, self.store, self.converter, "127.0.0.1", 0
                ) as server:
                    self.port = server.port
                    self._ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise

        self._loop.run_until_complete(main())


def settings_for(home: Path, **changes: object) -> Settings:
    return dataclasses.replace(Settings.load(home=home, env={}), **changes)
