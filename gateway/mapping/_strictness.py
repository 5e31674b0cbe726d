"""Which fields of a record may lose a malformed value instead of failing the record.

``mappings/<format>/strict.yaml`` lists, per message type, the *lenient* fields: a value
there that its ``as:`` conversion refuses (a date, time or number that is not one) is
dropped with a ``mapping.value-dropped`` warning naming the field, and the record is
converted without it. Every field not listed is strict: a malformed value fails the
record. Strict is the default so that a field a mapping starts to read later (an
identifier, a required element) can never be emptied silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..datafiles import load_data_file
from ..errors import ConfigError

__all__ = ["FILE", "Leniency", "load_leniency"]

FILE = "strict.yaml"
_INDEX = re.compile(r"\(\d+\)")  # PID-3(2), OBX(3)-5: occurrences and repetitions


@dataclass(frozen=True, slots=True)
class Leniency:
    """The lenient fields of one message type: terser paths without repetition, each
    covering its components (``RF1-9`` covers ``RF1-9.1``)."""

    fields: frozenset[str]
    source: str  # the file that lists them, for the warning

    def allows(self, location: str | None) -> bool:
        if not location or not self.fields:
            return False
        where = _INDEX.sub("", location)
        while True:
            if where in self.fields:
                return True
            if "." not in where:
                return False
            where = where.rsplit(".", 1)[0]


def load_leniency(folder: Path, types: list[str]) -> dict[str, Leniency]:
    """The lenient fields per message type from ``folder/strict.yaml`` ({} when absent).
    A message type no mapping handles is skipped (a type switched off keeps its listing;
    a misspelt one leaves its fields strict: the safe side)."""
    path = folder / FILE
    if not path.is_file():
        return {}
    raw = load_data_file(path)
    where = f"{folder.name}/{FILE}"
    lenient = raw.get("lenient") if isinstance(raw, dict) else None
    if not isinstance(lenient, dict):
        raise ConfigError("mapping", f"{where}: needs 'lenient', a map of message type → fields")
    out: dict[str, Leniency] = {}
    for mtype, fields in lenient.items():
        if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
            raise ConfigError("mapping", f"{where}: lenient.{mtype}: needs a list of fields")
        if str(mtype) in types:
            out[str(mtype)] = Leniency(frozenset(fields), f"mappings/{where}")
    return out
