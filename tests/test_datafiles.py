"""gateway.datafiles.FileWatch: a watched file is read again only once it has rested,
so a hand edit caught half written is never taken for the new policy, routes or
partners."""

from __future__ import annotations

import os
import time
from pathlib import Path

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


def test_a_file_written_a_moment_ago_is_not_read_until_it_rests(tmp_path: Path) -> None:
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
    _age(rules, 3)  # finished, and three seconds have passed
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
