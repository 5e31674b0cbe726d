"""The metrics docs/metrics.md documents, read from its table (the one source the tests
check the scrape and the alert rules against)."""

from __future__ import annotations

import re

from tests.conftest import REPO

DOC = REPO / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(gateway_[a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|")


def documented() -> dict[str, tuple[str, tuple[str, ...]]]:
    """name → (type, label names), one per row of the metrics table."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match:
            labels = tuple(re.findall(r"`([a-z_]+)`", match.group(3)))
            found[match.group(1)] = (match.group(2), labels)
    return found


def family_name(name: str, kind: str) -> str:
    """The name prometheus-client's parser gives the family (counters lose _total)."""
    return name.removesuffix("_total") if kind == "counter" else name
