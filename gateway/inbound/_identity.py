"""Identifier systems as the inbound identity checks compare them: the functions live
in ``gateway/fhirsystems.py``, below the store, whose migration 0016 fills the
``inbound_beside`` table with them exactly as the writes here do."""

from __future__ import annotations

from ..fhirsystems import (
    DEFAULT_PORTS,
    PATIENT_NAMES,
    beside,
    beside_rows,
    comparable,
    digest,
    host_key,
    identifier_key,
    system_key,
    type_codes,
)

__all__ = [
    "DEFAULT_PORTS",
    "PATIENT_NAMES",
    "beside",
    "beside_rows",
    "comparable",
    "digest",
    "host_key",
    "identifier_key",
    "system_key",
    "type_codes",
]
