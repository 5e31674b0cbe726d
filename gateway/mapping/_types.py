"""Value conversions named by ``as:`` in mappings (HL7 DTM → FHIR dateTime, ...)."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from ..errors import MappingError, shape

__all__ = ["CONVERTERS", "convert"]

# HL7 v2 DTM: YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(\.\d{1,4})?)?)?)?)?)?"
    r"([+-]\d{4})?\Z"
)


def _parts(value: str, location: str) -> re.Match[str]:
    m = _DTM.match(value)
    if not m:
        raise MappingError(
            "bad-datetime",
            f"value of form {shape(value)} is not an HL7 date/time "
            "(YYYY[MM[DD[HH[MM[SS[.S]]]]]][+/-ZZZZ])",
            location=location,
        )
    return m


def to_date(value: str, location: str, tz: str) -> str:
    m = _parts(value, location)
    return "-".join(p for p in (m[1], m[2], m[3]) if p)


def to_datetime(value: str, location: str, tz: str) -> str:
    """FHIR dateTime. A time needs a zone in FHIR; a zoneless sender gets ``tz``."""
    m = _parts(value, location)
    date = "-".join(p for p in (m[1], m[2], m[3]) if p)
    if not m[4]:
        return date
    zone = m[8] or tz.replace(":", "")
    zone = f"{zone[:3]}:{zone[3:]}" if zone not in ("Z", "+0000", "-0000") else "Z"
    seconds = m[6] or "00"
    frac = m[7] or ""
    return f"{date}T{m[4]}:{m[5] or '00'}:{seconds}{frac}{zone}"


def to_instant(value: str, location: str, tz: str) -> str | None:
    """FHIR instant; None (left out) when the source has no time of day to give."""
    m = _parts(value, location)
    if not m[5]:
        return None
    return to_datetime(value, location, tz)


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


CONVERTERS: dict[str, Callable[[str, str, str], object]] = {
    "base64": to_base64,
    "date": to_date,
    "dateTime": to_datetime,
    "instant": to_instant,
    "integer": to_integer,
    "decimal": to_decimal,
    "string": to_string,
}


def convert(kind: str, value: str, location: str, tz: str) -> object:
    return CONVERTERS[kind](value, location, tz)
