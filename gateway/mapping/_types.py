"""Value conversions named by ``as:`` in mappings (HL7 DTM → FHIR dateTime, ...)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from datetime import date
from decimal import Decimal, InvalidOperation

from ..errors import MappingError, shape

__all__ = ["CONVERTERS", "convert"]

# HL7 v2 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,4})?)?)?)?)?)?"
    r"([+-]\d{4})?\Z"
)


# The same groups as _DTM, for values that cannot be out of range (year 0001-9999, month
# 01-12, day 01-28, hour 00-23, minute and second 00-59, zone up to ±13:59 or ±1400):
# almost every value sent, which then skips _out_of_range's int() calls and date() check.
# A value it refuses is not wrong: _DTM and _out_of_range decide (day 31, second 60).
_SURE_DTM = re.compile(
    r"(?!0000)(\d{4})(?:(0[1-9]|1[0-2])(?:(0[1-9]|1\d|2[0-8])(?:([01]\d|2[0-3])"
    r"(?:([0-5]\d)(?:([0-5]\d)(\.\d{1,4})?)?)?)?)?)?"
    r"([+-](?:(?:0\d|1[0-3])[0-5]\d|1400))?\Z"
)


def _parts(value: str, location: str) -> re.Match[str]:
    sure = _SURE_DTM.match(value)
    if sure is not None:
        return sure
    m = _DTM.match(value)
    if not m:
        raise MappingError(
            "bad-datetime",
            f"value of form {shape(value)} is not an HL7 date/time "
            "(YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])",
            location=location,
        )
    problem = _out_of_range(m)
    if problem:
        # Caught here, at the field, rather than by the FHIR validator at a Bundle path.
        raise MappingError(
            "bad-datetime",
            f"value of form {shape(value)} is not a valid date/time: {problem}",
            location=location,
        )
    return m


def _out_of_range(m: re.Match[str]) -> str | None:
    """What is impossible in a well-formed DTM (month 13, 30 February, 25 o'clock), or
    None. The ranges are FHIR's: year 0001-9999, seconds to 60, zones up to ±14:00."""
    year, month, day, hour, minute, second, _, zone = m.groups()
    if year == "0000":
        return "the year is 0000"
    if month and not 1 <= int(month) <= 12:
        return "the month is not 01-12"
    if day == "00":
        return "the day does not exist in that month"
    if day and int(day) > 28:  # days up to 28 exist in every month
        try:
            date(int(year), int(month), int(day))
        except ValueError:
            return "the day does not exist in that month"
    if hour and int(hour) > 23:
        return "the hour is not 00-23"
    if minute and int(minute) > 59:
        return "the minute is not 00-59"
    if second and int(second) > 60:  # 60: a leap second, which FHIR allows
        return "the second is not 00-60"
    if zone and (int(zone[3:]) > 59 or zone[1:] > "1400"):
        return "the time zone offset is beyond 14 hours"
    return None


# The converters below match _SURE_DTM themselves: the call to _parts is made only for
# the rare value it refuses (a mapping converts a dozen dates per message).


def to_date(value: str, location: str, tz: str) -> str:
    return _date(_SURE_DTM.match(value) or _parts(value, location))


def _date(m: re.Match[str]) -> str:
    """YYYY[-MM[-DD]] (a day needs its month: the DTM pattern nests them)."""
    year, month, day = m.group(1, 2, 3)
    if not month:
        return year
    return f"{year}-{month}-{day}" if day else f"{year}-{month}"


def to_datetime(value: str, location: str, tz: str) -> str:
    """FHIR dateTime. A time needs a zone in FHIR; a zoneless sender gets ``tz``."""
    return _datetime(_SURE_DTM.match(value) or _parts(value, location), tz)


def _datetime(m: re.Match[str], tz: str) -> str:
    # the groups in one call (each m[i] is a call of its own): most values have a time
    year, month, day, hour, minute, second, frac, zone = m.groups()
    # YYYY[-MM[-DD]], as _date writes it
    date = (f"{year}-{month}-{day}" if day else f"{year}-{month}") if month else year
    if not hour:
        return date
    offset = zone or tz
    written = _ZONES.get(offset)
    if written is None:
        written = _zone(offset)
    return f"{date}T{hour}:{minute or '00'}:{second or '00'}{frac or ''}{written}"


# Each UTC offset as FHIR writes it ("+0800" or the zone setting "+08:00" → "+08:00"):
# a feed's few offsets, rewritten once. Cleared when full: short strings, bounded.
_ZONES: dict[str, str] = {}
_ZONES_SIZE = 256


def _zone(offset: str) -> str:
    bare = offset.replace(":", "")
    written = f"{bare[:3]}:{bare[3:]}" if bare not in ("Z", "+0000", "-0000") else "Z"
    if len(_ZONES) >= _ZONES_SIZE:
        _ZONES.clear()
    _ZONES[offset] = written
    return written


def to_instant(value: str, location: str, tz: str) -> str | None:
    """FHIR instant; None (left out) when the source has no time of day to give."""
    m = _SURE_DTM.match(value) or _parts(value, location)
    if not m[5]:
        return None
    return _datetime(m, tz)  # parsed once


def to_integer(value: str, location: str, tz: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MappingError(
            "bad-number", f"value of form {shape(value)} is not an integer", location=location
        ) from None


def to_decimal(value: str, location: str, tz: str) -> float | int:
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise MappingError(
            "bad-number", f"value of form {shape(value)} is not a number", location=location
        ) from None
    return int(d) if d == d.to_integral_value() and "." not in value else float(d)


def to_string(value: str, location: str, tz: str) -> str:
    return value


def to_base64(value: str, location: str, tz: str) -> str:
    """Text carried inline (an ED of type text) as FHIR base64Binary, UTF-8 encoded."""
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def to_base64_binary(value: str, location: str, tz: str) -> str:
    """Data that already is base64 (an ED sent with encoding Base64), unchanged once it
    is known to decode: the FHIR validator would otherwise refuse it at a Bundle path."""
    try:
        base64.b64decode(value)  # as lenient as the validator: whitespace is skipped
    except ValueError as exc:  # binascii.Error, or non-ASCII text
        reason = "it holds non-ASCII characters" if not value.isascii() else str(exc)
        raise MappingError(
            "bad-base64", f"the value is not valid base64: {reason}", location=location
        ) from None
    return value


CONVERTERS: dict[str, Callable[[str, str, str], object]] = {
    "base64": to_base64,
    "base64Binary": to_base64_binary,
    "date": to_date,
    "dateTime": to_datetime,
    "instant": to_instant,
    "integer": to_integer,
    "decimal": to_decimal,
    "string": to_string,
}


def convert(kind: str, value: str, location: str, tz: str) -> object:
    return CONVERTERS[kind](value, location, tz)
