"""Minimisation: what a profile says is removed or pseudonymised before a record leaves.

Two passes:

1. the profile's resources (Patient, RelatedPerson) change structurally: identifiers of
   the configured systems become a keyed pseudonym, addresses are reduced to the city,
   phone numbers are removed — and every original value is remembered. Only those
   resources are copied (:func:`structural`): the rest of the Bundle is shared with the
   input, which is never changed (it may be the converter's, with frozen parts). The
   policy stage replays it per patient (:func:`structural_memo`: same pseudonymised
   identifiers, addresses, phones and contacts, same changes and search);
2. every string of every resource (narratives, notes, conditional URLs, displays) and
   every base64 attachment is searched for those values: text is rewritten (HTML and
   plain text attachments are decoded, rewritten and encoded again), anything that
   cannot be rewritten (PDF) is dropped. Pass 2 runs only when one search of the
   minimised Bundle's compact JSON (:meth:`Minimisation.clean`: one squeeze, which
   also upper-cases, then plain byte searches) finds a value or an attachment; it
   works on a copy of its own.

Changes are reported by path (``Bundle.entry[2].resource.telecom[0]``), never by value.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ._data import Profile

__all__ = [
    "PSEUDONYM_SYSTEM",
    "Change",
    "Minimisation",
    "minimise",
    "pseudonym",
    "structural",
    "structural_memo",
]

PSEUDONYM_SYSTEM = "https://fhir-gateway.example.org/sid/pseudonym"
_DROP = object()  # a walker's answer: remove this element from its parent
_COUNTRY_CODES = ("86", "852", "853")
_NON_DIGIT = re.compile(r"\D")
_NOT_ALNUM = re.compile(r"[\W_]")
_SPELLED = re.compile(r"(?:[^\W_]|[ \-()])*")  # alphanumerics and separators only


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    action: str  # pseudonymised, address-reduced, telecom-removed, text-rewritten, ...
    kind: str = ""  # what was changed (identifier system, telecom system, content type)

    def to_json(self) -> dict[str, str]:
        out = {"path": self.path, "action": self.action}
        if self.kind:
            out["kind"] = self.kind
        return out


def pseudonym(key: bytes, system: str, value: str) -> str:
    """The keyed pseudonym of an identifier: the sender, who holds the key, finds it
    again from the original; no one else can reverse it."""
    digest = hmac.digest(key, f"{system}|{value.strip().upper()}".encode(), "sha256")
    return "PSN-" + base64.b32encode(digest[:15]).decode("ascii")


Alias = Callable[[str, str], str]  # (system, value) → pseudonym


class Minimisation:
    """Pass 1 done (:func:`structural`): ``bundle`` shares every part it did not change
    with the input; :meth:`clean` says whether pass 2 has anything to do, :meth:`finish`
    does it (on a copy of its own)."""

    __slots__ = ("_searched", "bundle", "changes", "profile", "rewrite")

    def __init__(
        self,
        bundle: dict[str, Any],
        changes: list[Change],
        profile: Profile,
        rewrite: _Rewriter | None,
    ) -> None:
        self.bundle = bundle
        self.changes = changes
        self.profile = profile
        self.rewrite = rewrite
        self._searched: tuple[bytes, bytes] | None = None

    def searched(self) -> tuple[bytes, bytes]:
        """The minimised Bundle's compact JSON and that JSON squeezed and upper-cased as
        :meth:`clean` reads it (:func:`squeezed`), made once: the policy stage's
        prohibited-code search reads them too."""
        if self._searched is None:
            data = orjson.dumps(self.bundle)
            ascii_only = self.rewrite is None or self.rewrite.ascii_probes
            self._searched = (data, squeezed(data, ascii_only))
        return self._searched

    def clean(self, data: bytes, squeezed_data: bytes | None = None) -> bool:
        """Whether ``data`` (serialised JSON holding the Bundle: the policy stage gives
        the very bytes that leave) has no attachment and no original value in any spelling
        the rewriter would find. False may be a false alarm (pass 2 then changes nothing);
        True never is. ``squeezed_data``: ``data`` squeezed, when at hand."""
        if b'"contentType"' in data:  # base64 hides its text: always decoded and checked
            return False
        return self.rewrite is None or not self.rewrite.present(data, squeezed_data)

    def finish(self, strings: bool, data: bytes | None = None) -> None:
        """Pass 2, on a copy of the Bundle of its own (parsed from ``data`` when given:
        the Bundle serialised): strings, when ``strings`` (some original value may be
        left), and attachments."""
        out = orjson.loads(orjson.dumps(self.bundle) if data is None else data)
        for n, entry in enumerate(out.get("entry") or []):
            if isinstance(entry, dict):
                _walk(
                    entry, f"Bundle.entry[{n}]", self.rewrite, self.profile, self.changes, strings
                )
        self.bundle = out
        self._searched = None


def structural(bundle: dict[str, Any], profile: Profile, sender: str, alias: Alias) -> Minimisation:
    """Pass 1 over the profile's resources, each copied before it changes: the input is
    never changed (it may hold frozen values shared between records, gateway/shared.py)."""
    out = dict(bundle)
    out["entry"] = entries = list(bundle.get("entry") or [])
    changes: list[Change] = []
    found = _Secrets()
    resources = profile.resources
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if (
            resource.get("resourceType") not in resources
            and ("contained" not in resource or not _holds(resource, resources))
            and not _parameters_hold(resource, resources)
        ):
            continue
        resource = dict(resource)  # _structural replaces what it changes: no deep copy
        entries[n] = dict(entry, resource=resource)
        path = f"Bundle.entry[{n}].resource"
        _structural(resource, path, profile, alias, sender, found, changes)
        contained = resource.get("contained")
        if isinstance(contained, list):
            resource["contained"] = contained = list(contained)
            for m, inner in enumerate(contained):
                if isinstance(inner, dict) and inner.get("resourceType") in resources:
                    contained[m] = inner = dict(inner)
                    where = f"{path}.contained[{m}]"
                    _structural(inner, where, profile, alias, sender, found, changes)
        if _parameters_hold(resource, resources):  # a Parameters carrying a Patient
            resource["parameter"] = _parameter_list(
                resource["parameter"], path, "parameter", (profile, alias, sender, found, changes)
            )
    return Minimisation(out, changes, profile, found.compile())


# What pass 1 needs as it walks: the profile, the pseudonym function, the sender, the
# values found and the changes made.
_Pass = tuple[Profile, "Alias", str, "_Secrets", list[Change]]


def _parameters_hold(resource: dict[str, Any], resources: frozenset[str]) -> bool:
    """Whether a Parameters resource carries one of ``resources`` (a Patient) in a
    parameter, a part of one, or a Parameters inside, at any depth."""
    if resource.get("resourceType") != "Parameters":
        return False
    params = resource.get("parameter")
    return isinstance(params, list) and any(_param_holds(p, resources) for p in params)


def _param_holds(param: Any, resources: frozenset[str]) -> bool:
    if not isinstance(param, dict):
        return False
    inner = param.get("resource")
    if isinstance(inner, dict) and (
        inner.get("resourceType") in resources or _parameters_hold(inner, resources)
    ):
        return True
    parts = param.get("part")
    return isinstance(parts, list) and any(_param_holds(p, resources) for p in parts)


def _parameter_list(params: list[Any], path: str, name: str, run: _Pass) -> list[Any]:
    """A copy of a ``parameter`` (or ``part``) list with the profile's resources in it
    minimised, each copied before it changes (the input is never changed)."""
    profile, alias, sender, found, changes = run
    out = list(params)
    for i, param in enumerate(params):
        if not _param_holds(param, profile.resources):
            continue
        where = f"{path}.{name}[{i}]"
        out[i] = param = dict(param)
        inner = param.get("resource")
        if isinstance(inner, dict) and inner.get("resourceType") in profile.resources:
            param["resource"] = inner = dict(inner)
            _structural(inner, f"{where}.resource", profile, alias, sender, found, changes)
        elif isinstance(inner, dict) and _parameters_hold(inner, profile.resources):
            param["resource"] = inner = dict(inner)
            inner["parameter"] = _parameter_list(
                inner["parameter"], f"{where}.resource", "parameter", run
            )
        if isinstance(param.get("part"), list):
            param["part"] = _parameter_list(param["part"], where, "part", run)
    return out


# Pass 1 as it went for a Bundle whose changed resources read the same: (entry number,
# the identifiers replaced by position, the elements replaced or removed) for each,
# the changes, the rewriter. See :func:`structural_memo`.
_Done = tuple[
    tuple[tuple[int, dict[int, Any] | None, dict[str, Any]], ...], tuple[Change, ...], Any
]
_GONE = object()  # an element pass 1 removed
_PARTS = ("address", "telecom", "contact")


def structural_memo(
    bundle: dict[str, Any],
    profile: Profile,
    sender: str,
    alias: Alias,
    memo: dict[tuple[Any, ...], _Done],
) -> Minimisation:
    """:func:`structural`, remembering per patient what it did: the next Bundle whose
    changed resources have the same pseudonymised identifiers (by position), addresses,
    telecoms and contacts — all pass 1 reads — gets the same changes and the same
    rewriter without doing it again (a new MRN or control id changes nothing of it).
    ``memo`` is the caller's (one per key: the pseudonyms depend on it)."""
    key: list[Any] = [profile.id, sender]
    resources = profile.resources
    entries = bundle.get("entry") or []
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if "contained" in resource or resource.get("resourceType") == "Parameters":
            return structural(bundle, profile, sender, alias)  # rare: not remembered
        if resource.get("resourceType") in resources:
            key += (n, _shape(resource, profile))
    found = memo.get(tuple(key))
    if found is None:
        done = structural(bundle, profile, sender, alias)
        if len(memo) > 4096:  # a bound: one per patient and profile
            memo.clear()
        memo[tuple(key)] = _remember(bundle, done)
        return done
    out = dict(bundle)
    out["entry"] = changed = list(entries)
    for n, identifiers, parts in found[0]:
        entry = changed[n]
        resource = dict(entry["resource"])
        if identifiers is not None:
            resource["identifier"] = [
                identifiers.get(i, ident) for i, ident in enumerate(resource["identifier"])
            ]
        for name, value in parts.items():
            if value is _GONE:
                del resource[name]
            else:
                resource[name] = value
        changed[n] = dict(entry, resource=resource)
    return Minimisation(out, list(found[1]), profile, found[2])


def _shape(resource: dict[str, Any], profile: Profile) -> bytes:
    """All pass 1 reads of a resource (not its other identifiers: they stay as they are)."""
    identifiers = resource.get("identifier")
    picked = []
    count = -1
    if isinstance(identifiers, list) and identifiers:
        count = len(identifiers)
        for n, ident in enumerate(identifiers):
            system, value = ident.get("system"), ident.get("value")
            if system in profile.pseudonymise and isinstance(value, str) and value:
                picked.append((n, system, value))
    return orjson.dumps(
        [resource.get("resourceType"), count, picked, *(resource.get(p) for p in _PARTS)]
    )


def _remember(bundle: dict[str, Any], done: Minimisation) -> _Done:
    """What :func:`structural` did, as :func:`structural_memo` replays it."""
    replayed = []
    for n, (before, after) in enumerate(zip(bundle["entry"], done.bundle["entry"], strict=True)):
        if before is after:
            continue
        old, new = before["resource"], after["resource"]
        identifiers = None
        if new.get("identifier") is not old.get("identifier"):
            identifiers = {
                i: ident
                for i, ident in enumerate(new["identifier"])
                if ident is not old["identifier"][i]
            }
        parts = {
            name: new.get(name, _GONE)
            for name in _PARTS
            if name in old and new.get(name) is not old[name]
        }
        replayed.append((n, identifiers, parts))
    return tuple(replayed), tuple(done.changes), done.rewrite


def minimise(
    bundle: dict[str, Any],
    profile: Profile,
    key: bytes,
    sender: str,
    *,
    alias: Alias | None = None,
) -> tuple[dict[str, Any], list[Change]]:
    """A minimised copy of ``bundle`` (never changed) and the list of changes (paths,
    never values). The copy shares with ``bundle`` what it does not change. ``alias``:
    the pseudonym function to use (the policy stage memoises it per decision)."""
    done = structural(bundle, profile, sender, alias or functools.partial(pseudonym, key))
    data = orjson.dumps(done.bundle)
    if not done.clean(data):
        done.finish(done.rewrite is not None and done.rewrite.present(data), data)
    return done.bundle, done.changes


def _holds(resource: dict[str, Any], resources: frozenset[str]) -> bool:
    """Whether a contained resource is one pass 1 changes."""
    contained = resource.get("contained")
    if not isinstance(contained, list) or not contained:
        return False
    return any(isinstance(c, dict) and c.get("resourceType") in resources for c in contained)


# -- pass 1: the profile's resources -----------------------------------------------------
class _Secrets:
    """Original values and what replaces them in free text."""

    def __init__(self) -> None:
        self.literal: dict[str, str] = {}  # exact strings (address lines, texts)
        self.patterns: list[tuple[str, str]] = []  # (regex, replacement)
        self.probes: list[str] = []  # compact values (alphanumerics), for squeezed JSON
        self.covered: set[str] = set()  # literals holding a probe's value: not searched

    def add_literal(self, value: str, replacement: str) -> None:
        value = value.strip()
        if len(value) >= 2:
            self.literal.setdefault(value, replacement)
            escaped = html.escape(value, quote=True)
            if escaped != value:
                self.literal.setdefault(escaped, html.escape(replacement))

    def compile(self) -> _Rewriter | None:
        if not self.literal and not self.patterns:
            return None
        # A literal holding another (an address's text holds its line) is found with it.
        rest = [v for v in self.literal if v not in self.covered]
        searched = [v for v in rest if not any(o != v and o in v for o in rest)]
        literals = [_needle(orjson.dumps(v)[1:-1].decode()) for v in searched]
        return _Rewriter(self, literals, _fewest(self.probes))

    def parts(self) -> list[tuple[str, str]]:
        ordered = sorted(self.literal.items(), key=lambda x: -len(x[0]))  # longest first
        return [(re.escape(v), r) for v, r in ordered] + self.patterns


# A needle for a value the rewriter matches case-insensitively, looked for in JSON bytes:
# ``pre``, the value's longest run without cased letters (digits, CJK, punctuation: any
# match holds it verbatim), and ``full``, the whole value upper-cased when its only cased
# characters are ASCII letters (None: ``pre`` is the whole value, or the value has other
# cased letters; then ``pre`` found is enough to say "maybe").
_Needle = tuple[bytes, bytes | None]
_ASCII_LETTERS = re.compile("[A-Za-z]+")
_ASCII = re.compile("[\x00-\x7f]+")
# The non-ASCII characters re.IGNORECASE matches to an ASCII letter (İ ı ſ and the Kelvin
# sign, tests/policy/test_minimise.py checks the list): data holding one may spell an
# ASCII value in a way bytes.upper() does not see.
_FOLD_BYTES = tuple(c.encode() for c in "\u0130\u0131\u017f\u212a")


@functools.lru_cache(maxsize=4096)
def _needle(text: str) -> _Needle:
    wide = _ASCII.sub("", text)
    if wide.lower() != wide or wide.upper() != wide:  # rare: split at every cased letter
        runs = "".join(c if c.lower() == c == c.upper() else "\0" for c in text).split("\0")
        return max(runs, key=len).encode(), None
    pre = max(_ASCII_LETTERS.split(text), key=len).encode()
    full = text.upper().encode()
    return pre, (None if full == pre else full)


def _fewest(values: list[str]) -> list[_Needle]:
    """The needles of ``values`` less those found whenever another is: a needle whose
    caseless part holds the whole of a caseless needle (a phone's digits with and
    without its country code) is only looked for through that one."""
    needles = list(dict.fromkeys(_needle(v) for v in values))
    whole = [pre for pre, full in needles if full is None]
    return [
        (pre, full)
        for pre, full in needles
        if not any(other in pre and (other != pre or full is not None) for other in whole)
    ]


def _found(needles: list[_Needle], data: bytes, raw: bytes) -> bool:
    """Whether any needle may match in ``data`` (``raw``, or squeezed from it; see
    _Needle): plain byte searches; the upper-cased copy is made only when a needle's
    caseless part is there."""
    upper: bytes | None = None
    for pre, full in needles:
        if pre not in data:
            continue
        if full is None or any(f in raw for f in _FOLD_BYTES):
            return True
        if upper is None:
            upper = data.upper()
        if full in upper:
            return True
    return False


def _found_upper(needles: list[_Needle], data: bytes, raw: bytes) -> bool:
    """:func:`_found` over ``data`` already upper-cased (:func:`squeezed`): no copy, and
    digit needles are found faster where no lower-case letter is left (bytes.find skips
    on a character-class filter that puts ``p``-``y`` with the digits)."""
    for pre, full in needles:
        if pre in data and (full is None or full in data or any(f in raw for f in _FOLD_BYTES)):
            return True
    return False


class _Rewriter:
    """One regex for every original value; each match becomes its replacement. The
    regex (and its parts) is made only when some value is present (most records: none)."""

    def __init__(self, secrets: _Secrets, literals: list[_Needle], probes: list[_Needle]) -> None:
        self.secrets = secrets
        self.literals = literals  # as they appear in JSON (escaped)
        self.probes = probes
        self.ascii_probes = all(p.isascii() for p in secrets.probes)

    @functools.cached_property
    def parts(self) -> list[tuple[str, str]]:
        return self.secrets.parts()

    @functools.cached_property
    def replacements(self) -> list[str]:
        return [r for _, r in self.parts]

    @functools.cached_property
    def regex(self) -> re.Pattern[str]:
        return re.compile("|".join(f"({p})" for p, _ in self.parts), re.IGNORECASE)

    def present(self, data: bytes, squeezed_data: bytes | None = None) -> bool:
        """Whether any original value may be in ``data`` (serialised JSON): a superset
        of what the rewriter finds, so False means nothing to rewrite. Literals are
        looked for as they are; identifiers and phone numbers in the JSON squeezed of
        everything the patterns allow between characters."""
        if _found(self.literals, data, data):
            return True
        if not self.probes:
            return False
        if squeezed_data is None:
            squeezed_data = squeezed(data, self.ascii_probes)
        return _found_upper(self.probes, squeezed_data, data)

    def hits(self, text: str) -> bool:
        return self.regex.search(text) is not None

    def __call__(self, text: str) -> str:
        return self.regex.sub(lambda m: self.replacements[(m.lastindex or 1) - 1], text)


# What may stand between the characters of an identifier or phone number in text:
# ASCII spaces, no-break and ideographic spaces, hyphens, brackets (and for phones
# dots). _SEP is the patterns' class; _squeeze removes the same from JSON bytes (JSON
# writes \t, \n ... as escapes; the others as themselves, in UTF-8).
_SEP = "[ \t\n\r\x0b\x0c\u00a0\u3000\\-()]"
_PHONE_SEP = "[ \t\n\r\x0b\x0c\u00a0\u3000\\-().]"
_GAP_BYTES = b" -().+"
# ASCII values are looked for in the JSON without any non-ASCII byte at all (the no-break
# and ideographic spaces go with the rest: one C-level pass, where a search for a
# multi-byte space is slow over CJK text, whose lead bytes are everywhere). Joining what
# a CJK character separated can only make a false alarm (then pass 2 looks exactly).
_GAP_AND_WIDE = _GAP_BYTES + bytes(range(0x80, 0x100))
_WIDE = ("\u00a0".encode(), "\u3000".encode())
# The separators JSON writes as escapes (\t, \n, \r, \f, \u000b and \u000c).
_GAP_CODES = (b"n", b"r", b"t", b"f")
_WIDE_GAPS = (b"u000b", b"u000c")


_UPPER = bytes(range(256)).upper()  # ASCII letters upper-cased, every other byte kept


def squeezed(data: bytes, ascii_only: bool = True) -> bytes:
    """:func:`_squeeze`, and its ASCII letters upper-cased in the same pass (what
    :meth:`_Rewriter.present_in` and the prohibited-code search read)."""
    if b"\\" in data:
        data = _unescape_gaps(data)
    if ascii_only:
        return data.translate(_UPPER, _GAP_AND_WIDE)
    for space in _WIDE:
        if space[:1] in data and space in data:
            data = data.replace(space, b"")
    return data.translate(_UPPER, _GAP_BYTES)


def _squeeze(data: bytes, ascii_only: bool = True) -> bytes:
    """JSON bytes without anything the patterns allow between characters: a spaced
    value (``K583726(A)``, ``+86 139-0000-0001``) is then a plain substring.
    ``ascii_only``: every value looked for is ASCII, and every non-ASCII byte goes."""
    if b"\\" in data:  # memchr; escapes are rare (a narrative's \" ...)
        data = _unescape_gaps(data)
    if ascii_only:
        return data.translate(None, _GAP_AND_WIDE)
    for space in _WIDE:
        if space[:1] in data and space in data:
            data = data.replace(space, b"")
    return data.translate(None, _GAP_BYTES)


def _unescape_gaps(data: bytes) -> bytes:
    """``data`` without the JSON escapes of separators; an escaped backslash becomes a
    neutral ``/`` (its second half never starts an escape). Escapes are few (a
    narrative's ``\\"``): found by memchr, the bytes copied only when one is a gap."""
    cuts: list[tuple[int, int, bytes]] = []
    at = data.find(b"\\")
    while at >= 0:
        code = data[at + 1 : at + 2]
        if code == b"\\":
            cuts.append((at, at + 2, b"/"))
        elif code in _GAP_CODES or data.startswith(_WIDE_GAPS, at + 1):
            cuts.append((at, at + (6 if code == b"u" else 2), b""))
        at = data.find(b"\\", at + 2)
    if not cuts:
        return data
    out: list[bytes] = []
    last = 0
    for start, end, put in cuts:
        out += (data[last:start], put)
        last = end
    out.append(data[last:])
    return b"".join(out)


def _probe(chars: str) -> str:
    """The alphanumerics of a value (``[\\W_]`` is exactly what str.isalnum refuses)."""
    return _NOT_ALNUM.sub("", chars)


@functools.lru_cache(maxsize=4096)
def _spaced(value: str) -> str:
    """A regex for an identifier or number written with or without separators
    (spaces, hyphens, brackets: ``K583726(A)``, ``+86 139-0000-0001``)."""
    chars = [re.escape(c) for c in value if c.isalnum()]
    return r"(?<![0-9A-Za-z])" + f"{_SEP}*".join(chars) + r"\)?(?![0-9A-Za-z])"


def _national(value: str) -> str:
    """The digits of a phone number without its country code (86, 852, 853)."""
    digits = _NON_DIGIT.sub("", value)
    for code in _COUNTRY_CODES:
        if value.strip().startswith(("+" + code, "00" + code)) and len(digits) > len(code) + 6:
            return digits[len(code) :]
    return digits


@functools.lru_cache(maxsize=4096)
def _phone(value: str) -> str:
    national = _national(value)
    body = f"{_PHONE_SEP}*".join(national)
    prefix = rf"(?:(?:\+|00)?(?:86|852|853){_PHONE_SEP}*)?"
    return rf"(?<!\d){prefix}{body}(?!\d)"


def _structural(
    resource: dict[str, Any],
    path: str,
    profile: Profile,
    alias: Alias,
    sender: str,
    found: _Secrets,
    changes: list[Change],
) -> None:
    """Pass 1 on ``resource``, a copy of its own whose parts are shared with the input:
    what changes is replaced (new lists and dicts), never changed in place."""
    if resource.get("resourceType") not in profile.resources:
        return
    identifiers: list[Any] = []
    if isinstance(resource.get("identifier"), list) and resource["identifier"]:
        resource["identifier"] = identifiers = list(resource["identifier"])
    for n, ident in enumerate(identifiers):
        system, value = ident.get("system"), ident.get("value")
        if system in profile.pseudonymise and isinstance(value, str) and value:
            pseudo = alias(system, value)
            new_system = f"{PSEUDONYM_SYSTEM}/{sender}"
            found.literal.setdefault(f"{system}|{value}", f"{new_system}|{pseudo}")
            if _SPELLED.fullmatch(value):  # its probe finds this literal too
                found.covered.add(f"{system}|{value}")
            found.patterns.append((_spaced(value), pseudo))
            found.probes.append(_probe(value))
            identifiers[n] = {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                            "code": "PSEUDED",
                            "display": "pseudonymized",
                        }
                    ]
                },
                "system": new_system,
                "value": pseudo,
            }
            changes.append(Change(f"{path}.identifier[{n}]", "pseudonymised", system))
    if profile.address != "keep" and resource.get("address"):
        kept = []
        for n, address in enumerate(resource["address"]):
            city = str(address.get("city") or "")
            for part in (*(address.get("line") or []), address.get("text")):
                if isinstance(part, str):
                    found.add_literal(part, city)
            # The postal code and the district go with the structure but are not searched
            # for in text: like the city they name an area, and the institutions' own
            # addresses share them (scrubbing them everywhere would strip those).
            if profile.address == "remove" or not city:
                changes.append(Change(f"{path}.address[{n}]", "address-removed"))
                continue
            reduced = {
                k: address[k]
                for k in ("use", "type", "city", "state", "country", "period")
                if k in address
            }
            kept.append(reduced)
            changes.append(Change(f"{path}.address[{n}]", "address-reduced"))
        if kept:
            resource["address"] = kept
        else:
            del resource["address"]
    if profile.telecom and resource.get("telecom"):
        kept = []
        for n, telecom in enumerate(resource["telecom"]):
            if telecom.get("system") in profile.telecom:
                value = telecom.get("value")
                if isinstance(value, str) and len(_NON_DIGIT.sub("", value)) >= 5:
                    found.patterns.append((_phone(value), "***"))
                    found.probes.append(_probe(_national(value)))
                changes.append(
                    Change(f"{path}.telecom[{n}]", "telecom-removed", str(telecom.get("system")))
                )
            else:
                kept.append(telecom)
        if kept:
            resource["telecom"] = kept
        else:
            del resource["telecom"]
    contacts = resource.get("contact")
    if isinstance(contacts, list):  # a Patient's contacts: their phones and addresses too
        resource["contact"] = contacts = list(contacts)
        for n, contact in enumerate(contacts):
            if isinstance(contact, dict):
                contacts[n] = contact = dict(contact)
                contact.setdefault("resourceType", resource["resourceType"])
                _structural(contact, f"{path}.contact[{n}]", profile, alias, sender, found, changes)
                contact.pop("resourceType", None)


# -- pass 2: every string, every attachment -------------------------------------------------
def _walk(
    node: Any,
    path: str,
    rewrite: _Rewriter | None,
    profile: Profile,
    changes: list[Change],
    strings: bool = True,
) -> Any:
    """Rewrite strings (when ``strings``: some original value is left somewhere) and
    attachments (always: their text is hidden in base64)."""
    if isinstance(node, dict):
        if "contentType" in node and "data" in node:
            return _attachment(node, path, rewrite, profile, changes)
        for k in list(node):
            value = node[k]
            if isinstance(value, str):
                if strings and rewrite is not None and rewrite.hits(value):
                    changes.append(Change(f"{path}.{k}", "text-rewritten"))
                    node[k] = rewrite(value)
                    if not node[k].strip():  # nothing left (a postal code): no empty strings
                        del node[k]
            elif isinstance(value, (dict, list)):
                result = _walk(value, f"{path}.{k}", rewrite, profile, changes, strings)
                if result is _DROP:
                    if k == "attachment":  # DocumentReference.content[n]: drop the content
                        return _DROP
                    del node[k]
        return node
    if isinstance(node, list):
        kept = []
        for n, item in enumerate(node):
            if isinstance(item, str):
                if strings and rewrite is not None and rewrite.hits(item):
                    changes.append(Change(f"{path}[{n}]", "text-rewritten"))
                    item = rewrite(item)
                if item.strip():
                    kept.append(item)
            elif _walk(item, f"{path}[{n}]", rewrite, profile, changes, strings) is not _DROP:
                kept.append(item)
        node[:] = kept
        return node
    return node


def _attachment(
    node: dict[str, Any],
    path: str,
    rewrite: _Rewriter | None,
    profile: Profile,
    changes: list[Change],
) -> Any:
    content_type = str(node.get("contentType") or "")
    if profile.attachment_action(content_type) == "drop":
        changes.append(Change(path, "attachment-dropped", content_type.split(";")[0]))
        return _DROP
    try:
        raw = base64.b64decode(str(node["data"]), validate=True)
        charset = _charset(content_type)
        text = raw.decode(charset)
    except (binascii.Error, ValueError, LookupError):  # not base64, not text: cannot check
        changes.append(Change(path, "attachment-dropped", content_type.split(";")[0]))
        return _DROP
    if rewrite is not None and rewrite.hits(text):
        data = rewrite(text).encode(charset)
        node["data"] = base64.b64encode(data).decode("ascii")
        if "size" in node:
            node["size"] = len(data)
        if "hash" in node:  # FHIR: base64 SHA-1 of the data
            node["hash"] = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")
        changes.append(Change(path, "attachment-rewritten", content_type.split(";")[0]))
    for k in ("title",):
        if isinstance(node.get(k), str) and rewrite is not None and rewrite.hits(node[k]):
            node[k] = rewrite(node[k])
    return node


def _charset(content_type: str) -> str:
    match = re.search(r"charset=([\w\-]+)", content_type, re.IGNORECASE)
    return match.group(1) if match else "utf-8"
