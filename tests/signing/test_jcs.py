"""The canonicaliser against RFC 8785's published examples and test vectors, and
against two independent implementations over random JSON: Trail of Bits' ``rfc8785``
and the small reference implementation below, written from the RFC's text."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.signing import SigningError, canonicalize, es6_number

# RFC 8785 appendix B: IEEE-754 bit patterns and their ECMAScript serialisation.
APPENDIX_B = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def _double(bits: str) -> float:
    value: float = struct.unpack(">d", bytes.fromhex(bits))[0]
    return value


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_appendix_b_numbers(bits: str, expected: str) -> None:
    value = _double(bits)
    assert es6_number(value) == expected
    assert canonicalize([value]) == f"[{expected}]".encode()


@pytest.mark.parametrize("bits", ["7fffffffffffffff", "7ff0000000000000", "fff0000000000000"])
def test_nan_and_infinity_are_refused(bits: str) -> None:
    with pytest.raises(SigningError) as caught:
        canonicalize({"x": [_double(bits)]})
    assert caught.value.code == "signing.canonical"


def test_section_3_2_2_example() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(value) == expected.encode("utf-8")


def test_section_3_2_3_sorting_by_utf16_code_units() -> None:
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    )
    assert canonicalize(value) == expected.encode("utf-8")


def test_section_3_2_4_utf8_output() -> None:
    value = {
        "peach": "This sorting order",
        "péché": "is wrong according to French",
        "pêche": "but canonicalization MUST",
        "sin": "ignore locale",
    }
    expected = (
        '{"peach":"This sorting order","péché":"is wrong according to French",'
        '"pêche":"but canonicalization MUST","sin":"ignore locale"}'
    )
    assert canonicalize(value) == expected.encode("utf-8")


def test_unsafe_integers_are_refused() -> None:
    assert canonicalize([2**53 - 1]) == b"[9007199254740991]"
    with pytest.raises(SigningError, match="IEEE-754"):
        canonicalize({"n": 2**53 + 1})


# -- a reference implementation from the RFC's text, independent of both ----------------


def _ref_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20:
            short = {8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}.get(code)
            out.append(short or f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _ref_number(x: float) -> str:
    # ECMAScript Number::toString (RFC 8785 3.2.2.3). Python's repr gives the shortest
    # digits that read back as x, the nearest when several do: ES6's digits s and n.
    if x == 0:
        return "0"
    if math.isinf(x) or math.isnan(x):
        raise ValueError
    text = repr(abs(x))
    if "e" in text:
        digits, exp = text.split("e")
        whole, _, frac = digits.partition(".")
        n = len(whole) + int(exp)
        s = whole + frac
    else:
        whole, _, frac = text.partition(".")
        if whole == "0":
            stripped = frac.lstrip("0")
            n = -(len(frac) - len(stripped))
            s = stripped
        else:
            n = len(whole)
            s = whole + frac
    s = s.rstrip("0")
    k = len(s)
    sign = "-" if x < 0 else ""
    if k <= n <= 21:
        body = s + "0" * (n - k)
    elif 0 < n <= 21:
        body = s[:n] + "." + s[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * -n + s
    else:
        e = n - 1
        body = s[0] + ("." + s[1:] if k > 1 else "") + f"e{'+' if e >= 0 else '-'}{abs(e)}"
    return sign + body


def reference(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _ref_number(value)
    if isinstance(value, str):
        return _ref_string(value)
    if isinstance(value, list):
        return "[" + ",".join(reference(v) for v in value) + "]"
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(_ref_string(k) + ":" + reference(value[k]) for k in keys) + "}"


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53) + 1, 2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_agrees_with_rfc8785_and_the_reference(value: Any) -> None:
    ours = canonicalize(value)
    assert ours == rfc8785.dumps(value)
    assert ours == reference(value).encode("utf-8")


@pytest.mark.parametrize(("bits", "expected"), APPENDIX_B)
def test_the_reference_passes_appendix_b(bits: str, expected: str) -> None:
    assert _ref_number(_double(bits)) == expected
