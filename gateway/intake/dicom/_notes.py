"""A study's warnings: one per (code, tag path, message), not one per instance.

The view and the charset check note a warning where they find it, named by instance
(``series[1]/instance[7] (0070,0080) ContentLabel``). A 500-slice series whose every
instance carries the same control character, or the same mislabelled charset, gave
500 warnings that say one thing. :class:`StudyNotes` keeps the first of them, named by
the tag path alone, and counts the instances it was found in (``in 500 of 500
instances``), with the file of the first one, so that the sender can be shown where.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable

from ...errors import Issue

__all__ = ["StudyNotes"]

_WHERE = re.compile(r"(series\[\d+\](/instance\[\d+\])?) ")

_Key = tuple[str, str, str, str]  # (code, tag path, message as first noted, level)


class StudyNotes(list[Issue]):
    """The study's issues (``Unit.issues``, the view's notes). A warning located in an
    instance (or a series) is folded into the study's one warning of that code, tag
    path and message, counting instances (series); anything else (errors, study-level
    warnings) is kept as appended."""

    def __init__(
        self,
        issues: Iterable[Issue],
        names: Callable[[], dict[str, str]],
        instances: int,
        series: int,
    ) -> None:
        super().__init__()
        # "series[1]/instance[2]" -> the file or member it was read from; "series[1]" ->
        # the file of its first instance (a series' attributes are read from there):
        # made when a warning first needs it (most studies have none to fold)
        self._make_names = names
        self._names: dict[str, str] | None = None
        self._totals = {"instance": instances, "series": series}
        self._index: dict[_Key, int] = {}
        self._found: dict[_Key, list[str]] = {}  # instances counted, first one first
        self.extend(issues)

    def append(self, issue: Issue) -> None:
        match = _WHERE.match(issue.location or "") if issue.severity == "warning" else None
        if match is None:
            super().append(issue)
            return
        where = (issue.location or "")[match.end() :]
        level = "instance" if match.group(2) else "series"
        key = (issue.code, where, issue.message, level)
        found = self._found.setdefault(key, [])
        if match.group(1) in found:
            return  # read twice (two mapping fields, a path with alternatives)
        found.append(match.group(1))
        folded = self._folded(issue, where, found, level)
        at = self._index.get(key)
        if at is None:
            self._index[key] = len(self)
            super().append(folded)
        else:
            self[at] = folded

    def extend(self, issues: Iterable[Issue]) -> None:
        for issue in issues:
            self.append(issue)

    def _folded(self, issue: Issue, where: str, found: list[str], level: str) -> Issue:
        if self._names is None:
            self._names = self._make_names()
        first = self._names.get(found[0], found[0])
        total = self._totals[level]
        noun = "instances" if level == "instance" else "series"
        if total == 1:
            count = f"in {first}"
        else:
            count = f"in {len(found)} of {total} {noun}, first in {first}"
        details = {**issue.details, noun: len(found)}
        return dataclasses.replace(
            issue, location=where or None, message=f"{issue.message} ({count})", details=details
        )
