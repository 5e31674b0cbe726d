"""HTTP header values the FHIR routes share."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

__all__ = ["http_date"]


def http_date(instant: str) -> str:
    """A FHIR instant (meta.lastUpdated) as an HTTP-date (RFC 9110 5.6.7), the form
    Last-Modified takes: ``Sun, 06 Dec 2026 21:40:00 GMT``."""
    moment = datetime.fromisoformat(instant.replace("Z", "+00:00")).astimezone(UTC)
    return format_datetime(moment, usegmt=True)
