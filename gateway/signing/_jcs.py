"""RFC 8785 JSON Canonicalization Scheme (JCS), fast.

The fast path is orjson with sorted keys, which already writes what JCS writes for
strings (UTF-8, only ``"``, ``\\`` and controls escaped, ``\\u00xx`` in lower case),
literals and integers. Three things differ, and are handled here:

* floats: orjson writes ``1.0`` and ``1e+16`` where JCS (ECMAScript Number::toString)
  writes ``1`` and ``10000000000000000``: number tokens with a fraction or exponent are
  rewritten by :func:`es6_number` (only when the output has such a token);
* integers beyond 2^53 are not exactly representable as IEEE-754 doubles: refused;
* key order: orjson sorts by UTF-8 bytes, JCS by UTF-16 code units; they differ only when
  a key holds a character beyond U+FFFF, so any such character sends the whole value to
  Trail of Bits' ``rfc8785`` (pure Python, slower, exact).
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import rfc8785

from ._errors import SigningError

__all__ = ["canonicalize", "es6_number"]

_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|-?[0-9][0-9.eE+-]*')
_LONG_INT = re.compile(rb"[0-9]{16}")
_ASTRAL_LEADS = (b"\xf0", b"\xf1", b"\xf2", b"\xf3", b"\xf4")  # UTF-8 lead bytes beyond U+FFFF
_MAX_SAFE = 2**53 - 1


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dicts, lists, str, int,
    float, bool, None). Raises SigningError for NaN, infinities and unsafe integers."""
    try:
        out = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise SigningError("canonical", f"value cannot be canonicalized: {exc}") from None
    if not out.isascii() and any(lead in out for lead in _ASTRAL_LEADS):
        return _exact(value)
    bare = _outside_strings(out)  # structure, numbers and literals only
    if b"null" in bare and _has_non_finite(value):
        raise SigningError("canonical", "NaN and Infinity have no JSON form (RFC 8785 3.2.2.3)")
    if not _needs_fix(bare):
        return out
    return _TOKEN.sub(_fix_number, out)


def _needs_fix(bare: bytes) -> bool:
    """Whether the text outside strings has a float (a '.', an exponent: an 'e' that
    is not in true/false) or an integer of 16 digits or more."""
    if b"." in bare or b"E" in bare:
        return True
    if bare.count(b"e") != bare.count(b"true") + bare.count(b"false"):
        return True
    return _LONG_INT.search(bare) is not None


def _outside_strings(out: bytes) -> bytes:
    """The JSON text without its strings. Splitting on quotes (C speed) works while no
    string holds an escaped quote; the regex handles those."""
    if b'\\"' in out:
        return _STRING.sub(b"", out)
    return b"".join(out.split(b'"')[::2])


def _exact(value: Any) -> bytes:
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError) as exc:
        raise SigningError("canonical", f"value cannot be canonicalized: {exc}") from None


def _has_non_finite(value: Any) -> bool:
    # orjson writes NaN and infinities as null; JCS refuses them
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _fix_number(match: re.Match[bytes]) -> bytes:
    token = match.group()
    if token[:1] == b'"':
        return token
    if b"." not in token and b"e" not in token and b"E" not in token:
        if abs(int(token)) > _MAX_SAFE:
            raise SigningError(
                "canonical",
                f"an integer of {len(token)} digits is beyond IEEE-754 double precision "
                "(RFC 8785 3.2.2.3); send it as a string or a decimal",
            )
        return token
    return es6_number(float(token)).encode()


def es6_number(x: float) -> str:
    """ECMAScript Number::toString of a finite double (RFC 8785 3.2.2.3): the shortest
    digits that round-trip (Python's repr has the same), in ES6 notation."""
    if x != x or x in (float("inf"), float("-inf")):
        raise SigningError("canonical", "NaN and Infinity have no JSON form (RFC 8785 3.2.2.3)")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    point = len(whole) + (int(exp) if exp else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    s = stripped.rstrip("0")
    k, n = len(s), point
    if k <= n <= 21:
        return sign + s + "0" * (n - k)
    if 0 < n <= 21:
        return sign + s[:n] + "." + s[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + s
    e = n - 1
    tail = f"e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + (s if k == 1 else s[0] + "." + s[1:]) + tail
