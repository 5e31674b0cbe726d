"""The gateway's logs: standard ``logging``, plain text or JSON lines, never patient data.

Every module logs to a child of the ``gateway`` logger. The CLI calls :func:`configure`
once (``gateway convert``, ``demo``, ``serve``) with the ``log_level`` and
``log_format`` settings; until then nothing is configured and the library stays quiet.

What a line may carry: a record's control id or position (``Record.log_id``, never the
file name a user gave), the stage, the outcome, an error code, a duration, exception
*types* and traceback *frames* (file, line, function: not the source line, which could
hold anything a test or a plug-in wrote). Never an exception's message: a library's message may
quote the value it choked on (``invalid literal for int(): '王伟'``), so tracebacks are
formatted by :func:`safe_traceback`, which withholds every message except those of
:class:`~gateway.errors.GatewayError` (written to name places, never values).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any, TextIO

import orjson

from .errors import GatewayError

__all__ = ["FIELDS", "LEVELS", "LOG_FORMATS", "configure", "safe_traceback"]

LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
# Structured fields a gateway log call may pass in ``extra`` (anything else is dropped).
FIELDS = ("record", "stage", "outcome", "code", "ms", "traceback")

_WITHHELD = "(message withheld: it may quote patient data)"


def safe_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` and the exceptions it chains to: frames (file, line,
    function) and exception types, without their messages."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        else:
            current = None if current.__suppress_context__ else current.__context__
    parts: list[str] = []
    for n, item in enumerate(reversed(chain)):
        if n:
            parts.append("\nwhich led to:\n\n")
        parts.append("Traceback (most recent call last):\n")
        parts.extend(
            f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}\n'
            for frame in traceback.extract_tb(item.__traceback__)
        )
        kind = type(item)
        name = (
            kind.__qualname__
            if kind.__module__ == "builtins"
            else (f"{kind.__module__}.{kind.__qualname__}")
        )
        said = item.issue.line() if isinstance(item, GatewayError) else _WITHHELD
        parts.append(f"{name}: {said}\n")
    return "".join(parts).rstrip("\n")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            out[name] = value
    if record.exc_info and record.exc_info[1] is not None and "traceback" not in out:
        out["traceback"] = safe_traceback(record.exc_info[1])
    return out


def _time(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the FIELDS given."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """``time level logger: message [key=value ...]``, the traceback indented below."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record)
        trace = fields.pop("traceback", None)
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if extra:
            line += f" [{extra}]"
        if trace:
            line += "\n" + "\n".join("    " + t for t in str(trace).splitlines())
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (tests swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


_HANDLER_MARK = "_gateway_handler"


def configure(
    level: str = "warning",
    fmt: str = "text",
    stream: TextIO | None = None,
    loggers: tuple[str, ...] = ("gateway",),
) -> None:
    """Send the ``gateway`` logger's lines (and those of ``loggers``) to ``stream``
    (default: the current stderr) in ``fmt`` at ``level``. Calling it again replaces
    what an earlier call installed. Third-party loggers other than those named keep
    their own configuration: at debug level some would print values they read."""
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {LEVELS}, not {level!r}")
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler: logging.Handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    for name in loggers:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, _HANDLER_MARK, False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.setLevel(level.upper())
        logger.propagate = False
    if "uvicorn" in loggers:
        handler.addFilter(_access_without_query)


def _access_without_query(record: logging.LogRecord) -> bool:
    """uvicorn's access line without the query string: a search's parameters are
    patient identifiers (``GET /fhir/Patient?identifier=...|0098765``). Its args are
    (client, method, path with query, HTTP version, status)."""
    args = record.args
    if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) > 2:
        path = str(args[2])
        if "?" in path:
            record.args = (*args[:2], path.split("?", 1)[0] + "?…", *args[3:])
    return True
