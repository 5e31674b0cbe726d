"""``Hl7View.row`` (compiled mappings read a node's or a segment's paths in one call) must
give, item by item, exactly what ``Hl7View.first`` gives for each path: the same value,
the same warning, the same error, the same fields recorded when reads are traced. Each
inline branch is met here: repetitions, escapes, subcomponents, "" nulls, padding,
MSH-1/2, missing segments and occurrences, nodes of each level, groups, control
characters (the lazy, general way) and tracing."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.intake.hl7v2 import Hl7View, Position, parse_message, split_messages
from gateway.intake.hl7v2._view import row_key, row_spec

REPO = Path(__file__).resolve().parents[3]

PLAIN = [
    "MSH|^~\\&|LAB^1.2.3^ISO|HOSP||HUB|20260101120000+0800||ORU^R01^ORU_R01|C1|P|2.5",
    "PID|1||123^^^HOSP^MR~~456^^^X&1.2.3&ISO^PI^^20200101^20301231||"
    'CHAN^ TAI MAN ^ ^^^^L~陳^大文^^^^^L~""||19800101|M|| |1 Road\\S\\A^^HK^^^HK^H||'
    '^PRN^PH^^852^12345678\\T\\9|  padded  |\\E\\esc\\F\\aped|a&b&c^d&e|""',
    "ORC|NW|ORD1^LAX||PG1^LAX",
    "OBR|1|ORD1^LAX||CT^Chest^LN^^^^^^CT 胸部|||20260101|||||||||DOC&X^Smith",
    "OBX|1|NM|29463-7^Weight^LN||65|kg",
    "OBX|2|ST|8302-2^Height^LN~X^Y||\\H\\bold\\N\\|cm",
    "ORC|NW|ORD2^LAX",
    "OBR|2|ORD2^LAX||MR^Head^LN",
]
# Control characters: a value may warn (removed) or fail (nothing else there); a hex
# escape (\X41\) alone already means the general way
CONTROLS = [
    *PLAIN[:3],
    "NTE|1||note\x0bwith a control|\\X07\\|ok^\\X0B\\b|\\X41\\",
    *PLAIN[3:],
]


def _view(segments: list[str]) -> Hl7View:
    [raw] = split_messages("".join(s + "\r" for s in segments).encode())
    return Hl7View(parse_message(raw))


def _paths() -> list[str]:
    out = []
    for seg in ("MSH", "PID", "ORC", "OBR", "OBX", "NTE", "ZZZ"):
        for occ in ("", "(2)", "(3)"):
            for field in range(1, 16):
                base = f"{seg}{occ}-{field}"
                out += [base, f"/{base}", f"{base}(1)", f"{base}(2)", f"{base}(3)"]
                out += [f"{base}.1", f"{base}.2", f"{base}.4.1", f"{base}.4.2", f"{base}.9"]
                out += [f"{base}(2).4.2", f"/{base}.1.1", f"{base}.1.3", f"{base}.2.1"]
    return out


RELATIVE = [".1", ".2", ".3", ".4", ".5", ".7", ".9", ".12", ".1.1", ".1.2", ".4.1", ".4.2"]
RELATIVE += [".4.3", ".4.4", ".2.1", ".9.9"]


def _heres(view: Hl7View) -> list[Position]:
    out = [view.root, *view.select("ORC", view.root), *view.select("OBX", view.root)]
    for path in ("PID-3", "PID-5", "PID-11", "PID-13", "PID-15", "PID-16", "OBR-4", "OBX-3"):
        out += view.select(path, view.root)
    for path in ("PID-3.4", "PID-16.1", "OBR-16.1", "MSH-1", "MSH-2", "PID-3.4.2"):
        out += view.select(path, view.root)
    return out


def _outcome(read: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    try:
        return ("value", read(*args))
    except GatewayError as exc:  # the same error, at the same field
        return ("error", type(exc).__name__, exc.code, exc.location)


def _after(view: Hl7View) -> tuple[Any, ...]:
    return (sorted(view.read or ()), [(i.code, i.location) for i in view.notes])


def _check(segments: list[str], trace: bool, rng: random.Random) -> int:
    heres = len(_heres(_view(segments)))
    groups: dict[str, list[str]] = {}
    for path in [*_paths(), *RELATIVE]:
        key = row_key(path)
        if key is not None:
            groups.setdefault(key, []).append(path)
    checked = 0
    for key, paths in groups.items():
        for n in range(heres):
            for chunk in range(0, len(paths), 7):
                wanted = tuple(paths[chunk : chunk + 7])
                spec = row_spec(key, wanted)
                order = list(range(len(wanted)))
                rng.shuffle(order)  # a mapping reads a row's items in any order, or some
                order = order[: rng.randint(1, len(order))]
                general, rows = _view(segments), _view(segments)
                if trace:
                    general.trace()
                    rows.trace()
                g_here, r_here = _heres(general)[n], _heres(rows)[n]
                expected = [_outcome(general.first, wanted[i], g_here) for i in order]
                got: list[tuple[Any, ...]] = []
                row = rows.row(spec, r_here)  # lazy unless plain: read as the items are
                for i in order:
                    got.append(_outcome(row.__getitem__, i))
                assert got == expected, (key, wanted, n, order)
                assert _after(rows) == _after(general), (key, wanted, n)
                checked += len(order)
    return checked


@pytest.mark.parametrize("trace", [False, True], ids=["plain", "traced"])
def test_rows_read_what_first_reads(trace: bool) -> None:
    assert _check(PLAIN, trace, random.Random(f"rows-{trace}")) > 5000


@pytest.mark.parametrize("trace", [False, True], ids=["plain", "traced"])
def test_rows_with_control_characters_read_the_general_way(trace: bool) -> None:
    view = _view(CONTROLS)
    assert not view._plain  # the lazy, general way is the one tested
    assert _check(CONTROLS, trace, random.Random(f"controls-{trace}")) > 5000


def test_a_row_of_a_plain_message_holds_its_values() -> None:
    """Not lazy reads: the plain case is computed at once, a list."""
    view = _view(PLAIN)
    assert view._plain
    node = view.select("PID-3", view.root)[1]
    paths = (".1", ".4.2", ".5", ".7", ".9")
    assert view.row(row_spec("", paths), node) == ["456", "1.2.3", "PI", "20200101", None]
    spec = row_spec("PID", ("PID-5", "PID-5(2).2", "PID-14", "PID-16.1.2", "PID-17"))
    assert view.row(spec, view.root) == ["CHAN", "大文", "padded", "b", None]
    spec = row_spec("/MSH", ("/MSH-1", "/MSH-2", "/MSH-3.2", "/MSH-9.3"))
    assert view.row(spec, view.select("OBX", view.root)[0]) == ["|", "^~\\&", "1.2.3", "ORU_R01"]


def test_row_keys() -> None:
    assert row_key(".4.1") == ""
    assert row_key("PID-3(2).1") == "PID"
    assert row_key("/MSH-10") == "/MSH"
    assert row_key("OBX(2)-5") == "OBX(2)"
    assert row_key("OBX(*)-5") is None  # every occurrence: read alone
    assert row_key("PID-3(*)") is None
    assert row_key("ORC") is None  # a group, not a value
    with pytest.raises(ValueError):
        row_spec("PID", ("PID-3", "OBR-3"))


@pytest.mark.parametrize("sample", sorted((REPO / "examples" / "hl7v2").glob("*.hl7")))
def test_rows_on_the_examples(sample: Path) -> None:
    for raw in split_messages(sample.read_bytes()):
        if raw.error is None:
            segments = raw.data.decode("utf-8", "replace").split("\r")[:-1]
            try:
                _view(segments)
            except GatewayError:
                continue  # not UTF-8 once decoded as here: the other tests cover it
            assert _check(segments, False, random.Random(sample.name)) > 0
