"""gateway.datafiles.FileWatch: a watched file is read again only once it has rested,
so a hand edit caught half written is never taken for the new policy, routes or
partners."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from gateway.datafiles import FileWatch

RULES = "rules:\n  - id: consent\n  - id: agreement\n"


def _watch(path: Path, interval: float) -> FileWatch:
    watch = FileWatch((path,))
    watch.reload_interval = interval
    watch._checked -= interval  # the first look is due at once
    return watch


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_file_written_a_moment_ago_is_not_read_until_it_rests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's editor has written half of rules.yaml (still valid YAML: one
    rule of two) when the gateway looks: not reported; at the next look the file is
    whole, and rested: reported once."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    _age(rules, 60)
    watch = _watch(rules, 2.0)
    rules.write_text(RULES[:30], encoding="utf-8")  # half written, now
    assert not watch.changed()
    rules.write_text(RULES + "  - id: minimise\n", encoding="utf-8")
    later = time.time_ns() + 3_000_000_000  # finished, and three seconds have passed
    monkeypatch.setattr(time, "time_ns", lambda: later)
    watch._checked -= 2.0
    assert watch.changed()
    watch._checked -= 2.0
    assert not watch.changed()  # once per edit


def test_a_file_unchanged_at_two_looks_is_read_even_with_a_time_ahead(tmp_path: Path) -> None:
    """A file copied with its modification time kept from a machine whose clock is
    ahead never looks old enough: unchanged at two looks in a row, it has rested."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    watch = _watch(rules, 2.0)
    rules.write_text(RULES + "  - id: minimise\n", encoding="utf-8")
    _age(rules, -3600)  # an hour ahead
    assert not watch.changed()
    watch._checked -= 2.0
    assert watch.changed()


def test_with_no_interval_a_change_is_read_at_once(tmp_path: Path) -> None:
    """reload_interval 0 (the tests' setting: look at every use): nothing to rest."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    watch = _watch(rules, 0.0)
    rules.write_text(RULES[:30], encoding="utf-8")
    assert watch.changed()


def test_a_file_removed_is_reported_at_once(tmp_path: Path) -> None:
    """A file gone has nothing left to write: its absence is read (and refused where a
    file is required) without waiting."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    watch = _watch(rules, 2.0)
    rules.unlink()
    assert watch.changed()


def test_a_set_copied_with_its_times_kept_is_read_together(tmp_path: Path) -> None:
    """A new policy copied in with its times kept (``rsync -a``, ``cp -p``, ``tar x``):
    each file arrives with the time it was written elsewhere, an hour ago, so its
    modification time says it rested. A look between the copy of the rules and that of
    the agreements must not take the new rules with the old agreements: the time the
    file arrived here (its change time, which no copy keeps) is what must have rested."""
    rules, agreements = tmp_path / "rules.yaml", tmp_path / "agreements.yaml"
    rules.write_text(RULES, encoding="utf-8")
    agreements.write_text("agreements:\n  - id: 港深转诊\n", encoding="utf-8")
    new = tmp_path / "new"
    new.mkdir()
    (new / "rules.yaml").write_text(RULES + "  - id: minimise\n", encoding="utf-8")
    (new / "agreements.yaml").write_text("agreements:\n  - id: 港穗转诊\n", encoding="utf-8")
    for path in (rules, agreements, *new.iterdir()):
        _age(path, 3600)
    watch = FileWatch((rules, agreements))
    watch.reload_interval = 2.0
    watch._checked -= 2.0
    shutil.copy2(new / "rules.yaml", rules)  # the first of the set
    assert not watch.changed()  # arrived a moment ago, whatever its copied time
    shutil.copy2(new / "agreements.yaml", agreements)
    watch._checked -= 2.0
    assert not watch.changed()  # the set still moving
    watch._checked -= 2.0
    assert watch.changed()  # the same at two looks: the whole set, once


def test_a_file_that_never_rests_is_not_read_but_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A file written again at every look (a sync loop, a script touching it each
    second) never rests: it is not read, since any look may catch it half written, but
    the operator is told once which file keeps the rules as they were, not left to
    wonder why an edit never applies."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    _age(rules, 60)
    watch = _watch(rules, 2.0)
    caplog.set_level(logging.WARNING, logger="gateway")
    for n in range(20):  # 40 s of looks, a new write before each
        rules.write_text(RULES + f"  - id: r{n}\n", encoding="utf-8")
        assert not watch.changed()
        watch._checked -= 2.0
        watch._pending_since -= 2.0
    said = [r.getMessage() for r in caplog.records if "rest" in r.getMessage()]
    assert said == [f"watched files keep changing, not read again until they rest: {rules}"]
