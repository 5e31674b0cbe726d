"""The progress bar of the commands that read batches (``gateway convert``, ``gateway
send``): records converted and failed, their rate, files done, and an ETA."""

from __future__ import annotations

import time
from typing import TextIO

from .envelope import Record

__all__ = ["Progress"]


class Progress:
    """A one-line progress bar on a terminal (silent otherwise): records converted and
    failed, their rate, and the files done; with the inputs' size known, the share of
    their bytes read and an ETA, so that one large file shows progress as it converts.
    Error lines are printed above it as they happen."""

    _EVERY = 0.2  # seconds between redraws: a bar that redraws per record costs time

    def __init__(
        self, total: int, stream: TextIO, enabled: bool, total_bytes: int | None = None
    ) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.total_bytes = total_bytes or None
        self.files = self.messages = self.failed = 0  # messages: records of any format
        self.bytes = 0
        self._start = self._drawn = time.monotonic()

    def record(self, record: Record) -> None:
        self.messages += 1
        self.failed += 0 if record.ok else 1
        if self.enabled and time.monotonic() - self._drawn >= self._EVERY:
            self._draw()

    def read(self, size: int) -> None:
        """``size`` more bytes of the inputs were read."""
        self.bytes += size

    def file_done(self) -> None:
        self.files += 1
        self._draw()

    def say(self, line: str) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        self._draw()

    def line(self) -> str:
        """The bar's text (without the carriage return)."""
        elapsed = max(time.monotonic() - self._start, 1e-6)
        width = 30
        share = (
            min(self.bytes / self.total_bytes, 1.0)
            if self.total_bytes
            else self.files / max(self.total, 1)
        )
        filled = int(width * share)
        rate = self.messages / elapsed
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}] {share:4.0%} "
            f"{self.messages:,} records, {self.failed:,} failed, {rate:,.0f}/s, "
            f"{self.files}/{self.total} files"
        )
        if self.total_bytes and 0 < self.bytes < self.total_bytes:
            left = elapsed * (self.total_bytes - self.bytes) / self.bytes
            text += f", ETA {_clock(left)}"
        return text

    def _draw(self) -> None:
        if self.enabled:
            self._drawn = time.monotonic()
            self.stream.write(f"\r\033[K{self.line()}")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")


def _clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
