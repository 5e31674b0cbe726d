"""Where the gateway's data folders live, and one loader for their YAML/JSON files.

In a checkout (editable install) the folders are the top-level ``mappings/``,
``seeds/`` and ``profiles/``; in a wheel they are packed under ``gateway/_data/``.
Parse errors become :class:`~gateway.errors.ConfigError` naming the file. What the
loader returns is frozen (gateway/shared.py): one parse serves every caller, and values
from it (constants, code-table targets, institution addresses) end up inside many
Bundles, so no caller may change it in place; ``copy.deepcopy`` gives a mutable copy.
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import yaml

from .errors import ConfigError
from .shared import freeze

__all__ = [
    "RELOAD_INTERVAL",
    "STILL_MOVING",
    "FileWatch",
    "data_dir",
    "file_stamps",
    "load_data_file",
    "syntax_problem",
]

RELOAD_INTERVAL = 2.0  # seconds between two looks at watched files (policy, routing, partners)
# Seconds a change may go on without resting before the operator is told (once): the files
# are not read meanwhile, and an edit that never applies must not be silent.
STILL_MOVING = 30.0

log = logging.getLogger("gateway.datafiles")

_PACKAGE = Path(__file__).resolve().parent


class _Loader(yaml.SafeLoader):
    """SafeLoader where a scalar starting with '.' stays a string.

    Mappings write relative HL7 paths as ``.1`` or ``.10``; plain YAML would read them
    as the floats 0.1 and 0.1, silently losing which component was meant.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if not (first == "." and tag.endswith(":float"))]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def data_dir(name: str) -> Path:
    """The folder ``name`` (mappings, seeds, profiles) shipped with the gateway."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_data" / name):
        if candidate.is_dir():
            return candidate
    raise ConfigError("missing-data", f"data folder {name!r} not found beside the gateway package")


@lru_cache(maxsize=512)
def load_data_file(path: Path) -> Any:
    """Parse a YAML or JSON data file, frozen (cached: every caller gets the same value,
    so none can change it: dicts and lists in it raise ``TypeError`` when changed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("unreadable", f"cannot read {path}: {exc.strerror}") from exc
    try:
        if path.suffix == ".json":
            return freeze(orjson.loads(text))
        return freeze(yaml.load(text, Loader=_Loader))
    except (yaml.YAMLError, orjson.JSONDecodeError) as exc:
        raise ConfigError("syntax", f"{path}: {syntax_problem(exc)}") from exc


def syntax_problem(exc: yaml.YAMLError | orjson.JSONDecodeError) -> str:
    """A parser's complaint as one line, ``line L, column C: problem``: PyYAML's own
    message spans lines with the offending text and a caret under it, which breaks the
    one-line error an operator greps for (and may echo a secret's line)."""
    if isinstance(exc, orjson.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = exc.context or ""
        if context and exc.context_mark is not None and exc.context_mark is not mark:
            context += f" at line {exc.context_mark.line + 1}"
        problem = exc.problem or "not valid YAML"
        return f"{where}{problem}" + (f" ({context})" if context else "")
    return " ".join(str(exc).split())


def file_stamps(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int, int] | None, ...]:
    """Each file's modification time, size, inode and mode (None: missing), to notice an
    edit. The inode: a file replaced by another (written beside, then renamed over it,
    as key and token rotation do) of the same size whose time was kept (``cp -p``,
    ``rsync -t``) or fell in the same clock tick is still seen to change. The mode: a
    secret made readable by others (``chmod``, which changes neither time nor size) is
    seen, and refused where it is read again (``config.not_private``)."""
    out: list[tuple[int, int, int, int] | None] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode))
    return tuple(out)


class FileWatch:
    """Whether watched files changed since the last look, looked at every
    ``reload_interval`` seconds at most: what the policy, routing and the partners each
    ask before reading their files again. Not thread-safe: its owner's lock guards it."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.paths = paths
        self.reload_interval = RELOAD_INTERVAL
        self._stamps = file_stamps(paths)
        self._pending: tuple[tuple[int, int, int, int] | None, ...] | None = None
        self._pending_since = 0.0  # monotonic: when the change not yet rested was first seen
        self._said = False  # that it keeps changing, once per change
        self._checked = time.monotonic()

    def changed(self) -> bool:
        """True once for each change seen at a look that is due; a file that then does
        not load is thus reported once per edit. A change is reported only once the
        changed files have rested: written (or copied here) ``reload_interval`` seconds
        before, or the same at two looks in a row (a clock or a copied time ahead of
        ours). A hand edit caught half written, or a copy still running, can be valid
        YAML with half the rules, partners or routes, and must not be read as the new
        truth; a later look sees it whole."""
        now = time.monotonic()
        if now - self._checked < self.reload_interval:
            return False
        self._checked = now
        stamps = file_stamps(self.paths)
        if stamps == self._stamps:
            self._pending = None
            return False
        if not (stamps == self._pending or self._rested(stamps)):
            self._still_moving(stamps, now)
            self._pending = stamps  # maybe still being written: the next look decides
            return False
        self._stamps, self._pending = stamps, None
        return True

    def _still_moving(
        self, stamps: tuple[tuple[int, int, int, int] | None, ...], now: float
    ) -> None:
        """A change seen not rested yet: its start noted, and once it has gone on for
        ``STILL_MOVING`` seconds (a file written at every look never rests, and is never
        read: any look may catch it half written) the files named in the log, once."""
        if self._pending is None:
            self._pending_since, self._said = now, False
        elif not self._said and now - self._pending_since >= STILL_MOVING:
            self._said = True
            moving = (
                str(p) for p, a, b in zip(self.paths, self._stamps, stamps, strict=True) if a != b
            )
            log.warning(
                "watched files keep changing, not read again until they rest: %s",
                ", ".join(moving),
            )

    def _rested(self, stamps: tuple[tuple[int, int, int, int] | None, ...]) -> bool:
        """Whether every file that changed was last written ``reload_interval`` seconds
        ago or more (a file gone has rested: its absence is what is read)."""
        written_before = time.time_ns() - int(self.reload_interval * 1e9)
        return all(
            new is None or _last_written(path) <= written_before
            for path, old, new in zip(self.paths, self._stamps, stamps, strict=True)
            if new != old
        )


def _last_written(path: Path) -> int:
    """When ``path`` was last written or arrived here (ns): its change time too, not only
    its modification time, which a copy keeps (``rsync -a``, ``cp -p``, ``tar x``): a set
    copied in with old times would otherwise look rested file by file, and a look
    between two copies would read new rules with old agreements. Gone since the look:
    now (not rested; the next look decides)."""
    try:
        st = path.stat()
    except OSError:
        return time.time_ns()
    return max(st.st_mtime_ns, st.st_ctime_ns)
