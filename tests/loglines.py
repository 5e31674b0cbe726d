"""Log lines caught whatever logging was configured since: the CLI's ``main`` stops the
gateway's loggers propagating to pytest's caplog, so tests that run it after a CLI test
attach their own handler."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _Lines(logging.Handler):
    """The messages logged to one logger, whatever configured logging since (the CLI's
    ``main`` stops the gateway's loggers propagating to pytest's caplog)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def errors_of(name: str) -> Iterator[list[str]]:
    handler = _Lines()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
