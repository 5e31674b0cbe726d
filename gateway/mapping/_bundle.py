"""Transaction Bundle assembly with deterministic identity.

Each resource's id is ``uuid5(NAMESPACE, "<type>|<system>|<value>")`` of its chosen
business identifier and its ``fullUrl`` is ``urn:uuid:<id>``. How its entry writes it
at the partner is data (``mappings/writes.yaml``, per resource type): reference data by
conditional create (``POST``, ``ifNoneExist: identifier=<system>|<value>``), content that
evolves by conditional update (``PUT <type>?identifier=<system>|<value>``, the resource
without an id: the partner keeps its own). Either way the same record always gives the
same Bundle and a resend never duplicates at the partner. Two entries with the same
identity are merged into one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha1
from itertools import count
from typing import Any
from urllib.parse import quote
from uuid import NAMESPACE_URL, uuid5

from ..datafiles import data_dir, load_data_file
from ..errors import ConfigError, Issue, MappingError
from ..shared import FrozenDict

__all__ = [
    "NAMESPACE",
    "WRITE_MODES",
    "BundleBuilder",
    "ResourceTemplate",
    "WriteRules",
    "fresh_resource_id",
    "resource_id",
    "search_escape",
    "write_rules",
]

# Fixed forever: changing it would change every id the gateway has ever sent.
NAMESPACE = uuid5(NAMESPACE_URL, "urn:fhir-gateway:resource-id")


# SHA-1 with the namespace already hashed in: copying it is cheaper than a new hash
# object (OpenSSL 3 looks the algorithm up for each one) and saves hashing 16 bytes.
_NAMESPACE_SHA1 = sha1(NAMESPACE.bytes, usedforsecurity=False)

# The RFC 4122 variant's hex digit (10xx: two low bits of the digest's kept) for each
# digest digit: a dict look-up, not int(d, 16) and a string index for every id.
_VARIANT = {d: "89ab"[int(d, 16) & 3] for d in "0123456789abcdef"}


def fresh_resource_id(resource_type: str, system: str, value: str) -> str:
    """``str(uuid5(NAMESPACE, "<type>|<system>|<value>"))`` (RFC 4122 §4.3), made from
    the SHA-1 digest directly: building a UUID object and formatting it cost twice the
    hash, for every new patient and order. Uncached: for ids whose inputs never recur
    (a patient's, an order's, a Bundle's), which a cache would only hash, store and
    evict."""
    digest = _NAMESPACE_SHA1.copy()
    digest.update(f"{resource_type}|{system}|{value}".encode())
    h = digest.hexdigest()
    # The version (5) and the RFC 4122 variant (10xx) set in the hex digits themselves:
    # byte 6's high nibble is digit 12, byte 8's is digit 16 (its two low bits kept)
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


# Organisations and staff recur in every message. Bounded to entries of a known small
# size (three short strings and a 36-character id, ~350 bytes: ~1.4 MB in all), full
# within the first thousand or so fresh messages (issue 18: memory must not grow with
# the batch); the patients' and orders' own ids skip it (fresh_resource_id).
resource_id = lru_cache(maxsize=4096)(fresh_resource_id)


# create-if-none-exist: POST + ifNoneExist (reference data); update: conditional PUT.
WRITE_MODES = ("create-if-none-exist", "update")


@dataclass(frozen=True, slots=True)
class WriteRules:
    """How each resource type is written at the partner (``mappings/writes.yaml``)."""

    default: str
    by_type: dict[str, str]

    def mode(self, resource_type: str) -> str:
        return self.by_type.get(resource_type, self.default)

    @classmethod
    def parse(cls, raw: Any, where: str) -> WriteRules:
        if not isinstance(raw, dict):
            raise ConfigError("mapping", f"{where}: needs 'default' and 'types'")
        default = raw.get("default", WRITE_MODES[0])
        by_type = {str(k): v for k, v in (raw.get("types") or {}).items()}
        for name, mode in [("default", default), *by_type.items()]:
            if mode not in WRITE_MODES:
                raise ConfigError(
                    "mapping",
                    f"{where}: {name}: unknown write mode {mode!r}; use one of "
                    + ", ".join(WRITE_MODES),
                )
        return cls(str(default), {k: str(v) for k, v in by_type.items()})


@lru_cache(maxsize=1)
def write_rules() -> WriteRules:
    """The shipped rules, read once."""
    path = data_dir("mappings") / "writes.yaml"
    return WriteRules.parse(load_data_file(path), path.name)


@dataclass(frozen=True, slots=True)
class ResourceTemplate:
    resource_type: str
    fields: Callable[[Any], Any]
    identity_element: str
    prefer: tuple[str, ...]
    required: str | None  # error text when no identifier; None = skip with a warning
    refs: frozenset[str]
    source: str
    location: str | None = None  # where the identifier comes from, for errors
    # Whether its ids recur in other records (organisations, staff: their id cached);
    # False for a record's own (a patient's, its orders', see _memo.own_keys)
    recurs: bool = True


# What quote(safe=":/") leaves as it is, and no search escape: most identifiers.
_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_.~:/-]*")


def search_escape(text: str) -> str:
    r"""``text`` as a FHIR search token part: ``\ , $ |`` escaped with a backslash, then
    URL-encoded (the conditions of the entries made here, and delivery's checks of them)."""
    if _PLAIN_TOKEN.fullmatch(text):
        return text  # the patient's and order's own identifiers: never cached
    return _search_escape_quoted(text)


@lru_cache(maxsize=2048)  # identifiers that need escaping: short strings, bounded
def _search_escape_quoted(text: str) -> str:
    for ch in ("\\", ",", "$", "|"):
        text = text.replace(ch, "\\" + ch)
    return quote(text, safe=":/")


def _choose(identifiers: Any, prefer: tuple[str, ...]) -> tuple[str, str] | None:
    if isinstance(identifiers, dict):
        identifiers = [identifiers]
    usable = [i for i in identifiers or () if i.get("system") and i.get("value")]
    if not usable:
        return None
    # the first usable identifier of the first preferred type: the first one when it has
    # that type (the patient's MR listed first), whatever follows it
    if prefer and prefer[0] not in _codes(usable[0]):
        codes = [_codes(ident) for ident in usable]  # each identifier's type codes, once
        for code in prefer:
            for ident, have in zip(usable, codes, strict=True):
                if code in have:
                    return ident["system"], ident["value"]
    return usable[0]["system"], usable[0]["value"]


def _codes(ident: Any) -> set[Any]:
    return {c.get("code") for c in (ident.get("type") or {}).get("coding", [])}


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    """Fill what ``into`` lacks from ``other``; lists gain the items they lack.

    New lists are built rather than extended: mapped values may be shared with the
    engine's memo of pure fragments, frozen (gateway/shared.py): changing one would
    raise.
    """
    for key, value in other.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], list) and isinstance(value, list):
            into[key] = into[key] + [v for v in value if v not in into[key]]


# What merging one memoised (frozen) fields object into the entry made from another adds
# (an organisation named by two segments, two ways), by the pair's ids: (made from,
# merged, id, write rules, {key: new value}). Both recur in every message of a feed: the
# merge (deep comparisons of their lists) is worked out once. Cleared when full, like
# _IDENTITIES: each entry keeps its two frozen objects alive.
_MERGES: dict[tuple[int, int], tuple[Any, ...]] = {}
_MERGES_SIZE = 256


def _merge_shared(
    resource: dict[str, Any], made_from: Any, fields: Any, rid: str, writes: Any
) -> None:
    """``_merge(resource, fields)`` for ``resource`` as it was made from ``made_from``
    (nothing merged into it since), both frozen: the same result, found rather than
    worked out when the pair met before."""
    key = (id(made_from), id(fields))
    known = _MERGES.get(key)
    if (
        known is None
        or known[0] is not made_from
        or known[1] is not fields
        or known[2] != rid
        or known[3] is not writes
    ):
        merged = dict(resource)
        _merge(merged, fields)
        # the values _merge set or replaced (new keys in the order it added them)
        added = {k: v for k, v in merged.items() if k not in resource or resource[k] is not v}
        if len(_MERGES) >= _MERGES_SIZE:
            _MERGES.clear()
        known = _MERGES[key] = (made_from, fields, rid, writes, added)
    for k, v in known[4].items():
        # a joined list is the record's own, as _merge makes it (later stages may edit it)
        resource[k] = v.copy() if type(v) is list else v


# The identity of memoised (frozen, shared) fields by their id: (fields, template,
# write rules, id, fullUrl, resource, request). Organisations and staff recur in every
# message. The resource and request are only ever copied (a dict's copy is cheaper than
# building it again key by key): each record's entry is its own.
_IDENTITIES: dict[int, tuple[Any, ...]] = {}
# Cleared when full. Each entry keeps its frozen fields alive (even once their memo let
# them go), so it holds few: the memoised resources that recur are a feed's few dozen
# organisations and staff.
_IDENTITIES_SIZE = 512


def _request(mode: str, rtype: str, system: str, value: str) -> dict[str, str]:
    if _PLAIN_TOKEN.fullmatch(system + value):  # both plain (most): one match, no escape
        query = f"identifier={system}|{value}"
    else:
        query = f"identifier={search_escape(system)}|{search_escape(value)}"
    if mode == "update":
        return {"method": "PUT", "url": f"{rtype}?{query}"}
    return {"method": "POST", "url": rtype, "ifNoneExist": query}


# Each builder's number: the memo tells a key met again in another record from one met
# twice in this one (gateway/mapping/_memo.py).
_SERIALS = count(1)


class BundleBuilder:
    def __init__(self, writes: WriteRules | None = None) -> None:
        self.serial = next(_SERIALS)
        self.writes = writes or write_rules()
        self.entries: list[dict[str, Any]] = []
        self.warnings: list[Issue] = []
        # id → (its resource, the fields it was made from, whether nothing was merged
        # into it since)
        self._by_id: dict[str, tuple[dict[str, Any], Any, bool]] = {}
        # key → fullUrls in insertion order (a dict as an ordered set: thousands of DG1s
        # must not make membership tests quadratic)
        self._scopes: list[dict[str, dict[str, None]]] = [{}]

    # A group ('group: ORC') opens a scope: references inside it find the resources made
    # in the same group first (this order's practitioner), then those made outside it.
    # Only the keys a group exports stay visible once it closes, so one group's
    # practitioner can never stand in for the next group's missing one.
    def push(self) -> None:
        self._scopes.append({})

    def pop(self, export: frozenset[str] = frozenset()) -> None:
        finished = self._scopes.pop()
        below = self._scopes[-1]
        for key in export:
            below.setdefault(key, {}).update(finished.get(key, {}))

    def ref(self, key: str) -> str | None:
        for scope in reversed(self._scopes):
            urls = scope.get(key)
            if urls:
                return next(iter(urls))
        return None

    def refs(self, key: str) -> list[str]:
        scopes = self._scopes
        if len(scopes) == 1:  # outside any group (most calls: the memo's keys)
            return list(scopes[0].get(key, ()))
        out: dict[str, None] = {}
        for scope in reversed(self._scopes):
            for url in scope.get(key, ()):
                out.setdefault(url)
        return list(out)

    def count(self, key: str) -> int:
        return len(self._scopes[-1].get(key, {}))

    def add(self, key: str, template: ResourceTemplate, fields: dict[str, Any], here: Any) -> None:
        """The resource made of ``fields`` as an entry (or merged into the entry of the
        same id), listed under ``key`` for references. One function, its identity and
        its placement inline: a message adds a dozen entries."""
        frozen = type(fields) is FrozenDict
        known = _IDENTITIES.get(id(fields)) if frozen else None
        if (
            known is not None
            and known[0] is fields
            and known[1] is template
            and known[2] is self.writes
        ):  # a memoised resource: its identity worked out once
            rid, url, resource, request = known[3], known[4], known[5], known[6]
        else:
            made = self._identity(template, fields, here)
            if made is None:
                return
            rid, url, resource, request = made
            if frozen:
                if len(_IDENTITIES) >= _IDENTITIES_SIZE:
                    _IDENTITIES.clear()
                # fields kept with their id: the id cannot be reused meanwhile (one fields
                # object under two templates or rules: the last one's is kept)
                _IDENTITIES[id(fields)] = (fields, template, self.writes, *made)
        # The resource's entry, or ``fields`` merged into the entry of the same id. The
        # resource and request are made for this record, or shared (``frozen``: kept with
        # the identity of memoised fields), then copied for the entry.
        existing = self._by_id.get(rid)
        if existing is not None:
            # The very fields the entry was made from (a memoised organisation met
            # twice: one frozen object) add nothing: merging only adds what is missing.
            made_from = existing[1]
            if made_from is not fields:
                if existing[2] and frozen and type(made_from) is FrozenDict:
                    _merge_shared(existing[0], made_from, fields, rid, self.writes)
                else:
                    _merge(existing[0], fields)
                self._by_id[rid] = (existing[0], made_from, False)
        else:
            if frozen:
                resource, request = resource.copy(), request.copy()
            self._by_id[rid] = (resource, fields, True)
            # later stages may edit entries: the record's own resource and request
            self.entries.append({"fullUrl": url, "resource": resource, "request": request})
        scope = self._scopes[-1]
        urls = scope.get(key)
        if urls is None:
            scope[key] = {url: None}
        else:
            urls[url] = None

    def _identity(
        self, template: ResourceTemplate, fields: dict[str, Any], here: Any
    ) -> tuple[str, str, dict[str, Any], dict[str, str]] | None:
        """(id, fullUrl, resource, request) of the resource made of ``fields``; None (a
        warning) when it has no business identifier and may be left out."""
        rtype = template.resource_type
        chosen = _choose(fields.get(template.identity_element), template.prefer)
        if chosen is None:
            label = getattr(here, "label", "") or template.location
            if template.required:
                raise MappingError("no-identity", template.required, location=label)
            self.warnings.append(
                Issue(
                    "mapping.no-identity",
                    f"{rtype} has no business identifier, so it is not created "
                    "(references to it keep only a display)",
                    location=label,
                    severity="warning",
                )
            )
            return None
        system, value = chosen
        rid = (resource_id if template.recurs else fresh_resource_id)(rtype, system, value)
        mode = self.writes.mode(rtype)
        request = _request(mode, rtype, system, value)
        # A conditional update carries no id: the partner keeps the id it gave the
        # resource (Medplum refuses a create-by-update with one: "Cannot provide ID").
        if mode == "update":
            resource = {"resourceType": rtype, **fields}
        else:
            resource = {"resourceType": rtype, "id": rid, **fields}
        return rid, f"urn:uuid:{rid}", resource, request
