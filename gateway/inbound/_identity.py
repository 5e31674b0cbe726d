"""Identifier systems as the inbound identity checks compare them (docs/inbound.md,
"one patient"): ``https://fhir.nsch.example.cn/sid/mrn/``, ``HTTPS://FHIR.NSCH.EXAMPLE.CN/sid/mrn``
and ``https://fhir.nsch.example.cn:443/sid/mrn`` are one system. Compared as written,
another spelling of the same hospital's MRN system was "another system, nothing to
compare" and let another patient's number by. Only the comparison uses this form:
what is stored (and searched, and sent back) keeps the system as the partner wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

__all__ = ["comparable", "system_key"]

_HIERARCHICAL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)(.*)", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def system_key(system: str) -> str:
    """``system`` as compared (RFC 3986 §6.2.2-6.2.3, and the trailing slash FHIR
    systems are written with or without): scheme and host in lower case, no default
    port, no trailing slash; a URN's ``urn:<namespace>:`` in lower case (RFC 8141: its
    namespace id is case-insensitive). Path and value keep their case: ``/sid/MRN`` may
    be another system. '' (no system) stays ''."""
    found = _HIERARCHICAL.fullmatch(system)
    if found is not None:
        scheme, authority, rest = found[1].lower(), found[2], found[3]
        user, at, host = authority.rpartition("@")
        host = host.lower().removesuffix(_DEFAULT_PORTS.get(scheme, "\0"))
        return f"{scheme}://{user}{at}{host}{rest.rstrip('/')}"
    found = _SCHEME.fullmatch(system)
    if found is None:
        return system.rstrip("/")
    scheme, rest = found[1].lower(), found[2]
    if scheme == "urn":
        namespace, colon, tail = rest.partition(":")
        rest = f"{namespace.lower()}{colon}{tail}"
    return f"{scheme}:{rest.rstrip('/')}"


def comparable(identifiers: Iterable[Any], *, systemless: bool = True) -> set[tuple[str, str]]:
    """(system as compared, value) of each Identifier (a dict with a ``value``) among
    ``identifiers``; '' for one without a system, or (``systemless`` False) left out."""
    return {
        (system_key(str(i.get("system") or "")), str(i["value"]))
        for i in identifiers
        if isinstance(i, dict) and i.get("value") and (systemless or i.get("system"))
    }
