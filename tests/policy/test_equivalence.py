"""The policy stage decides, and lets leave, the same as recorded before its speed work
(equivalence.json, made by make_equivalence.py at commit aaf6d1c): on every golden and
example Bundle, each decision path (allow, allow-with-changes, hold, deny), the Bundles
with the Patient's values quoted everywhere (narratives, notes, references, HTML, text
and PDF attachments) and with a prohibited code; the input given as bytes, as the
converter's dict with its JSON, and as a dict alone; each decided twice by one Policy
(whatever it keeps between decisions must not change the answer), and the bytes that
leave valid JSON equal to the recorded Bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.policy import Policy
from gateway.policy._minimise import Minimisation

from . import make_equivalence as eq

EXPECTED: dict[str, dict[str, Any]] = orjson.loads(
    Path(__file__).with_name("equivalence.json").read_bytes()
)
CASES = list(eq.cases())
FORMS = ("bytes", "dict+text", "dict")


def test_every_recorded_case_is_run() -> None:
    assert sorted(eq.key(name, path) for name, _, path in CASES) == sorted(EXPECTED)
    outcomes = {found["outcome"] for found in EXPECTED.values()}
    assert outcomes == {"allow", "allow-with-changes", "hold", "deny"}


def test_same_decision_and_bundle_as_recorded(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = Policy(settings, key=eq.KEY)  # its own: nothing kept from other tests
    passes = []  # how often pass 2 ran: the fast path must be taken, and the slow one
    finish = Minimisation.finish

    def counted(self: Minimisation, strings: bool, data: bytes | None = None) -> None:
        passes.append(strings)
        finish(self, strings, data)

    monkeypatch.setattr(Minimisation, "finish", counted)
    wrong = []
    for round_ in (1, 2):
        for name, data, path in CASES:
            expected = EXPECTED[eq.key(name, path)]
            made = {form: eq.decide(policy, data, path, form) for form in FORMS}
            for form, decision in made.items():
                if eq.record(decision) != expected:
                    wrong.append(f"round {round_}, {form}: {eq.key(name, path)}")
            if len({decision.bundle_json for decision in made.values()}) != 1:
                wrong.append(f"round {round_}, bytes differ by form: {eq.key(name, path)}")
    assert wrong == []
    changed = sum(1 for found in EXPECTED.values() if found["outcome"] == "allow-with-changes")
    assert 0 < len(passes) < changed * len(FORMS) * 2  # some clean (no pass 2), some not
    assert True in passes  # values left in strings: rewritten
