"""FHIR search date values (``[prefix]date[time]``, as in ``_lastUpdated=ge2026-12``) as
the range of instants their precision names. Shared by the inbound FHIR search and the
audit search, which sits below the inbound stage."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from .errors import shape

__all__ = ["DateSearchError", "date_range"]

_DATE = re.compile(
    r"(eq|ge|gt|le|lt)?([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})(?:T([0-9]{2}):([0-9]{2})"
    r"(?::([0-9]{2})(?:\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2}))?)?)?"
)


class DateSearchError(ValueError):
    """A value that is not a searchable FHIR date; the message names its form only."""


def date_range(value: str) -> tuple[str, datetime, datetime]:
    """``value`` → (prefix, start, end): the prefix (``eq`` when none) and the half-open
    range of instants the value's precision names, naive UTC."""
    m = _DATE.fullmatch(value.strip())
    if m is None:
        raise DateSearchError(
            "not a FHIR date or dateTime with an optional prefix (eq, ge, gt, le, lt); "
            f"value of form {shape(value)}"
        )
    prefix, year, month, day, hour, minute, second, zone = m.groups()
    try:  # the calendar's edges too: 9999-12 ends in year 10000, 0001-01-01+01:00 before 1
        start = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            tzinfo=UTC,
        )
        if zone and zone != "Z":
            sign = 1 if zone[0] == "+" else -1
            start -= sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
        end = _end(start, second, minute, day, month)
    except (ValueError, OverflowError):
        raise DateSearchError(
            f"not a calendar date the gateway can search (value of form {shape(value)})"
        ) from None
    return prefix or "eq", start.replace(tzinfo=None), end.replace(tzinfo=None)


def _end(
    start: datetime, second: str | None, minute: str | None, day: str | None, month: str | None
) -> datetime:
    if second is not None:
        return start + timedelta(seconds=1)
    if minute is not None:
        return start + timedelta(minutes=1)
    if day is not None:
        return start + timedelta(days=1)
    if month is not None:
        return start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.replace(year=start.year + 1)
