"""Process-wide switches the DICOM reader needs, held only while it needs them.

pydicom's value validation is a process-wide setting: in its default mode it logs each
invalid value *with the value* (a name, a birth date) through the ``pydicom`` logger,
and no patient data may reach the logs. The cyclic garbage collector, paused while
headers are parsed, is process-wide too. Both are changed only inside these scopes and
restored when the last scope ends, on every exit path; the scopes count their users,
so concurrent conversions (the API's thread pool) cannot restore each other's state
too early or leave it changed.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom import config

__all__ = ["no_gc", "quiet_pydicom"]

_lock = threading.Lock()
_quiet_users = 0
_saved_mode: int | None = None
_gc_users = 0
_gc_was_enabled = False


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """pydicom reads without validating values (so without logging them)."""
    global _quiet_users, _saved_mode
    with _lock:
        if _quiet_users == 0:
            # The private attribute: the public getter turns "not set" into WARN, and
            # "not set" must come back as it was (pydicom reads its environment then).
            _saved_mode = config.settings._reading_validation_mode
            config.settings.reading_validation_mode = config.IGNORE
        _quiet_users += 1
    try:
        yield
    finally:
        with _lock:
            _quiet_users -= 1
            if _quiet_users == 0:
                config.settings._reading_validation_mode = _saved_mode


@contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic collector paused: parsing allocates many small objects, none of them
    garbage until the study is mapped, and its passes cost ~25 % of a read (bench/).
    Never held across a ``yield``: the caller's code must run with the collector as
    it was."""
    global _gc_users, _gc_was_enabled
    with _lock:
        if _gc_users == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_users += 1
    try:
        yield
    finally:
        with _lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_was_enabled:
                gc.enable()
