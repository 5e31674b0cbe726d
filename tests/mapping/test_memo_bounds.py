"""The memo's memory is bounded in bytes and does not grow with the batch (issue 18):
keys met once leave nothing behind, and remembered results stop at a byte budget
however many recurring keys a feed has."""

from __future__ import annotations

import tracemalloc
from dataclasses import dataclass, field
from typing import Any

import pytest

from gateway.mapping._bundle import BundleBuilder
from gateway.mapping._memo import Scope, memoised
from gateway.shared import is_frozen


@dataclass
class _Node:
    text: str
    level: int = 0


@dataclass
class _View:
    memo: bool = True
    tracing: bool = False
    reading: tuple[str, str] = ("|^~\\&", "utf-8")


@dataclass
class _Ctx:
    here: _Node
    view: _View = field(default_factory=_View)
    tz: str = "Asia/Hong_Kong"
    vars: dict[str, Any] = field(default_factory=dict)
    # a real record's state (its serial tells records apart): the memo's compiled build
    # (mypyc) checks its type, as its annotation says
    state: BundleBuilder = field(default_factory=BundleBuilder)

    def at(self, here: _Node) -> _Ctx:
        return _Ctx(here, self.view, self.tz, self.vars, self.state)


def _spec(ctx: Any) -> Any:
    # a result worth remembering: an organisation-sized value (~1 KB of JSON, its own text)
    return {"name": ctx.here.text, "alias": [ctx.here.text * 50], "active": True}


def _retained(calls: list[str]) -> int:
    """Bytes still allocated after the memo met ``calls`` (node texts, in order)."""
    cached = memoised(_spec, Scope())
    # each call another record's (a key met again is met by another record)
    ctxs = [_Ctx(_Node("warm-up")) for _ in calls]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for ctx, text in zip(ctxs, calls, strict=True):
            cached(ctx, _Node(text))
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_keys_met_once_leave_nothing_behind() -> None:
    # 15,000 one-off keys (a feed's patients), with a key that recurs often enough
    # that the memo keeps looking (it rests when keys hardly ever recur)
    calls = []
    for n in range(15_000):
        calls.append(f"patient-{n}")
        if n % 5 == 0:
            calls.append("the hospital")
    assert _retained(calls) < 100_000


def test_remembered_results_stop_at_a_byte_budget() -> None:
    # 2,000 recurring keys, each met twice: every one is remembered (~1 KB each)
    calls = [f"organisation-{n}" for n in range(2_000) for _ in range(2)]
    assert _retained(calls) < 400_000


def test_a_key_read_twice_by_one_record_stays_that_records_own() -> None:
    # the patient's identifier, read for the Patient and for a reference to it: no
    # other record meets it, so it is not frozen and kept; a key another record meets
    # again (the sending hospital) is remembered and shared from then on
    calls: list[str] = []

    def spec(ctx: Any) -> Any:
        calls.append(ctx.here.text)
        return {"value": ctx.here.text}

    cached = memoised(spec, Scope())

    def convert(texts: list[str]) -> list[Any]:
        ctx = _Ctx(_Node("warm-up"))  # one record: one BundleBuilder, its serial
        return [cached(ctx, _Node(text)) for text in texts]

    first = convert(["patient-1", "patient-1", "hospital"])
    second = convert(["patient-2", "patient-2", "patient-2", "hospital", "hospital"])
    assert calls.count("patient-2") == 3  # computed each time: never remembered
    assert not any(is_frozen(value) for value in second[:3])  # the record's own
    assert calls.count("hospital") == 2  # remembered on the second record's first read
    assert is_frozen(second[3]) and second[3] is second[4]
    assert first[0] == first[1] == {"value": "patient-1"}


def test_shared_entries_stop_at_a_byte_budget() -> None:
    """The ceiling target's whole entries (gateway/mapping/_ceiling.py) are bounded in
    bytes as the memo is: 3,000 organisations remembered keep at most its budget."""
    from gateway.mapping._bundle import _IDENTITIES, BundleBuilder, ResourceTemplate
    from gateway.mapping._ceiling import SharedEntries
    from gateway.shared import freeze

    template = ResourceTemplate(
        "Organization", _spec, "identifier", (), None, frozenset(), "test", recurs=False
    )
    entries = SharedEntries()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3_000):
            fields = freeze(
                {
                    "identifier": [{"system": "urn:x", "value": f"org-{n}"}],
                    "name": f"organisation {n}" * 20,
                }
            )
            state = BundleBuilder()
            state.add("sender", template, fields, None)
            entries.remember((f"org-{n}^^ISO", 0, "Asia/Hong_Kong"), fields, template, state)
        _IDENTITIES.clear()  # the add's own bounded table: not the entries'
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < len(entries) < 3_000
    assert retained < 200_000


def test_ceiling_answers_are_bounded() -> None:
    """The ceiling target's answers of a pure function (``coding``) at one call site are
    bounded in bytes too: 3,000 codes' codings kept hold at most its budget."""
    from gateway.mapping._ceiling import Answers

    answers = Answers()
    env = object()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3_000):
            coding = [{"system": "urn:x", "code": f"c{n}", "display": f"exam {n}" * 20}]
            answers.keep((f"c{n}", "urn:x"), env, coding)
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert 0 < len(answers) < 3_000
    assert retained < 200_000


def test_a_type_error_of_the_spec_is_its_own_and_runs_it_once() -> None:
    """Only the making of the key is tried for an unhashable value: a TypeError raised
    by the spec itself (a mapping bug) propagates from its one run. It ran the spec a
    second time (its side effects twice) under the key's ``except TypeError``."""
    runs: list[str] = []

    def broken(ctx: Any) -> Any:
        runs.append(ctx.here.text)
        raise TypeError("a bug in the spec")

    cached = memoised(broken, Scope())
    record = BundleBuilder()
    # first met, met again in the same record, met in another record
    for n, state in enumerate([record, record, BundleBuilder()]):
        runs.clear()
        with pytest.raises(TypeError, match="a bug in the spec"):
            cached(_Ctx(_Node("warm-up"), state=state), _Node("OBR|1|A1"))
        assert runs == ["OBR|1|A1"], n
