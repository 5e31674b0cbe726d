"""Identifier systems as the inbound identity checks compare them (docs/inbound.md,
"one patient"): ``https://fhir.nsch.example.cn/sid/mrn/``, ``HTTPS://FHIR.NSCH.EXAMPLE.CN/sid/mrn``
and ``https://fhir.nsch.example.cn:443/sid/mrn`` are one system. Compared as written,
another spelling of the same hospital's MRN system was "another system, nothing to
compare" and let another patient's number by. Only the comparison uses this form:
what is stored (and searched, and sent back) keeps the system as the partner wrote it.
Below the store (its migrations 0016 and 0017 fill ``inbound_beside`` with :func:`beside_rows`,
as the inbound stage's writes do).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

import orjson

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

_HIERARCHICAL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)([^?#]*)(.*)", re.DOTALL)
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)", re.DOTALL)
# RFC 3986 §6.2.3: the port a scheme means when none is written. One table for the
# identifier systems here and the FHIR bases inbound references are read against
# (gateway/inbound/_apply.py, _server)
DEFAULT_PORTS = {"http": 80, "https": 443}
# host (a bracketed IPv6 literal, or up to the port's colon) and port (digits, maybe none)
_HOST_PORT = re.compile(r"(\[[^\]]*\]|[^:]*)(?::([0-9]*))?")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def system_key(system: str) -> str:
    """``system`` as compared (RFC 3986 §6.2.2-6.2.3, and the trailing slash FHIR
    systems are written with or without): scheme and host in lower case, no default
    port (nor an empty one, nor its leading zeros), an escaped unreserved character
    as itself (``%6Drn`` is ``mrn``) and other escapes' hex digits in capitals, no dot
    segments (``/sid/./mrn``, ``/sid/x/../mrn``), no trailing slash; a URN's
    ``urn:<namespace>:`` in lower case (RFC 8141: its namespace id is case-insensitive).
    Path and value keep their case: ``/sid/MRN`` may be another system. '' (no
    system) stays ''. Each spelling left out was a way to write another patient's
    number as "another system, nothing to compare"."""
    found = _HIERARCHICAL.fullmatch(system)
    if found is not None:
        scheme, authority = found[1].lower(), _unescaped(found[2])
        path, rest = _without_dots(_unescaped(found[3])), _unescaped(found[4])
        user, at, host = authority.rpartition("@")
        return f"{scheme}://{user}{at}{_host(scheme, host)}{(path + rest).rstrip('/')}"
    found = _SCHEME.fullmatch(system)
    if found is None:  # a non-empty system never becomes '' (no system): "/" stays
        return system.rstrip("/") or system[:1]
    scheme, rest = found[1].lower(), found[2]
    if scheme == "urn":
        namespace, colon, tail = rest.partition(":")
        rest = f"{namespace.lower()}{colon}{tail}"
    return f"{scheme}:{rest.rstrip('/')}"


def _host(scheme: str, host: str) -> str:
    """host[:port] in lower case, as :func:`host_key` has it; one not read as a host and
    a port of digits (``a:b:c``) only in lower case: an identifier system is compared,
    never refused."""
    found = _HOST_PORT.fullmatch(host)
    if found is None:
        return host.lower()
    return host_key(scheme, found[1].lower(), int(found[2]) if found[2] else None)


def host_key(scheme: str, host: str, port: int | None) -> str:
    """A server's host and port as RFC 3986 §6.2.3 compares them, the one form of both
    the identifier systems (:func:`system_key`) and the FHIR bases of inbound
    references (``_apply._server``): an IPv6 literal in its brackets (``[::1]:8080`` is
    not ``[::1:8080]``; urlsplit's hostname drops them), the port as a number (no
    leading zeros), left out when it is the scheme's default (``DEFAULT_PORTS``) or
    none (None). ``host`` comes in lower case, each caller's: an identifier system's
    all of it, urlsplit's an IPv6 zone id (``%25eth0``) as written, as before the two
    shared this. What a caller refuses (user information, an unreadable port) it
    refuses before."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return host if port is None or port == DEFAULT_PORTS.get(scheme) else f"{host}:{port}"


def _unescaped(part: str) -> str:
    """RFC 3986 §6.2.2.1-2: an escaped unreserved character as itself, other escapes
    with their hex digits in capitals (``%2f`` is ``%2F``, not ``/``)."""

    def one(found: re.Match[str]) -> str:
        char = chr(int(found[1], 16))
        return char if char in _UNRESERVED else f"%{found[1].upper()}"

    return _ESCAPE.sub(one, part)


def _without_dots(path: str) -> str:
    """RFC 3986 §5.2.4 remove_dot_segments: ``/sid/./mrn`` and ``/sid/x/../mrn`` are
    ``/sid/mrn``."""
    out: list[str] = []
    segments = path.split("/")
    for n, segment in enumerate(segments):
        last = n == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def comparable(identifiers: Iterable[Any], *, systemless: bool = True) -> set[tuple[str, str]]:
    """(system as compared, value) of each Identifier (a dict with a ``value``) among
    ``identifiers``; '' for one without a system, or (``systemless`` False) left out."""
    return {
        identifier_key(i)
        for i in identifiers
        if isinstance(i, dict) and i.get("value") and (systemless or i.get("system"))
    }


def identifier_key(ident: dict[str, Any]) -> tuple[str, str]:
    """An Identifier (a dict with a ``value``) as compared: (system as compared, value),
    '' for no system."""
    return system_key(str(ident.get("system") or "")), str(ident["value"])


# the elements naming the patient a resource is about (``_content.py``), at its top level
PATIENT_NAMES = ("subject", "patient", "for", "beneficiary")


def type_codes(ident: dict[str, Any]) -> frozenset[str]:
    """The codes of an Identifier's ``type`` (``MR``, ``PPN``...), whatever coding
    system each is written under (as any written, a code is the identifier's kind)."""
    kind = ident.get("type")
    codings = kind.get("coding") if isinstance(kind, dict) else None
    return frozenset(
        str(c["code"])
        for c in (codings if isinstance(codings, list) else [])
        if isinstance(c, dict) and c.get("code")
    )


# a stored reference to a Patient of this store, versioned or not (what the inbound
# stage keeps: any other spelling is refused there, gateway/inbound/_apply.py)
_PATIENT_LITERAL = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def beside(resource: Any) -> set[tuple[str, tuple[str, str], frozenset[str]]]:
    """The identifiers (as compared, each with its type codes) written beside a
    resource's references to a ``Patient/<id>``, with that ``Patient/<id>``: every such
    reference at any depth (``subject``, an ``asserter`` or ``performer``, an evidence
    detail, a contained resource's ``subject``), not only the element naming whom the
    record is about: another patient's number beside ``asserter`` was kept with the
    record, yet held against nothing. The store keeps them (``inbound_beside``, filled
    as a record is written) for the identity checks; a change of :func:`system_key`
    or of what is found here must come with a migration that fills it again."""
    out: set[tuple[str, tuple[str, str], frozenset[str]]] = set()
    for ref in _references(resource):
        literal = _PATIENT_LITERAL.fullmatch(str(ref.get("reference") or ""))
        ident = ref.get("identifier")
        if literal is not None and isinstance(ident, dict) and ident.get("value"):
            out.add((f"Patient/{literal[1]}", identifier_key(ident), type_codes(ident)))
    return out


def _references(node: Any) -> Iterable[dict[str, Any]]:
    """Every dict inside ``node`` that holds a ``reference`` (a Reference)."""
    if isinstance(node, dict):
        if "reference" in node:
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def beside_rows(row: int, resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``inbound_beside`` rows of a stored version (its ``inbound_resources`` row):
    one per identifier :func:`beside` finds next to a reference to a ``Patient/<id>``
    (the row's ``patient``), in a stable order. A Patient's own identifiers are none."""
    found = sorted(
        (patient, system, value, sorted(codes))
        for patient, (system, value), codes in beside(resource)
    )
    return [
        {
            "resource_row": row,
            "n": n,
            "patient": patient,
            "system": system,
            "value": value,
            "types": orjson.dumps(codes).decode(),
            "system_hash": digest(system),
            "value_hash": digest(value),
        }
        for n, (patient, system, value, codes) in enumerate(found)
    ]


def digest(text: str) -> str:
    """SHA-256 (hex) of ``text``: what ``inbound_beside`` indexes instead of a system or
    value of any length (an index entry has a bounded size on PostgreSQL)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
