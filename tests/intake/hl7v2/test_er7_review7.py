"""Review of the one-message fast path of ``_split_frame`` and the limits counted only
when reachable (``_check_bounds``): on tricky inputs (line-end mixes, blank and BOM
lines, MSH inside a field, GB 18030 / Big5 / UTF-8 Chinese names, counts at a limit's
exact boundary) they give what the per-line path and a full count give. These held:
kept as tests."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError
from gateway.intake.hl7v2 import _er7, parse_message, split_messages

MSH = b"MSH|^~\\&|APP|FAC|GW|HUB|20260101||ADT^A01|C1|P|2.5"
NAMES = {
    "UNICODE UTF-8": "陳大文".encode(),
    "GB18030": "陈大文".encode("gb18030"),
    "BIG5": "陳大文".encode("big5hkscs"),
}
TRICKY = [
    b"\r".join([MSH, b"PID|1||1^^^H||CHAN"]) + b"\r",
    b"\n".join([MSH, b"PID|1", b"", b"   ", b"NTE|1||MSH|x"]),
    b"\r\n".join([MSH, b"PID|1", b"\t", b"OBX|1|TX|||a~b"]) + b"\r\n",
    MSH + b"\rPID|1\n\rOBX|1\r\n\nNTE|1",
    MSH + b"\r \x0c\rPID|1\r",
    MSH + b"\r MSH|^~\\&|X\rPID|1\r",  # indented: a segment of the message, not a message
    *(
        MSH + b"|||||" + cs.encode() + b"\rPID|1||1^^^H||" + name + b"\r"
        for cs, name in NAMES.items()
    ),
]


def _described(data: bytes) -> list[object]:
    out: list[object] = []
    for raw in split_messages(data):
        item: list[object] = [raw.index, raw.line, raw.segments, raw.error and raw.error.code]
        try:
            m = parse_message(raw)
            item.append((m.segments, m.separators, m.charset, m.message_type, m.controls))
        except GatewayError as exc:
            item.append(exc.issue)
        out.append(item)
    return out


@pytest.mark.parametrize("data", TRICKY)
def test_one_message_path_is_the_per_line_path(
    data: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast = _described(data)
    # every payload holding an MSH line now looks "not alone": the per-line loop runs
    monkeypatch.setattr(_er7, "_NOT_ALONE", frozenset({b"MSH"}))
    assert _described(data) == fast


@pytest.mark.parametrize("which", ["repetitions", "components", "subcomponents"])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_limits_at_the_exact_boundary(which: str, delta: int) -> None:
    """A field with limit-1, limit and limit+1 separators of each kind: refused exactly
    when the count is over the limit, as a full count says (the size shortcut only
    skips counts that cannot reach it)."""
    bounds = _er7.limits()
    limit = getattr(bounds, which)
    sep = {"repetitions": b"~", "components": b"^", "subcomponents": b"&"}[which]
    field = sep * (limit - 1 + delta)  # n separators: n + 1 parts
    data = MSH + b"\rZZZ|" + field + b"\r"
    [raw] = split_messages(data)
    if delta <= 0:
        parse_message(raw)
    else:
        with pytest.raises(GatewayError) as exc:
            parse_message(raw)
        assert exc.value.code.startswith("intake.")
