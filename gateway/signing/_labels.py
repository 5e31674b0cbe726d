"""Bilingual labels (labels.yaml beside this module)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

__all__ = ["label", "labels"]


@cache
def labels() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        Path(__file__).with_name("labels.yaml").read_text(encoding="utf-8")
    )
    return data


def label(group: str, key: str | None, both: bool = True) -> str:
    """'中文 English' for a label (the key itself when it has none)."""
    entry = labels().get(group, {}).get(key or "")
    if not entry:
        return key or ""
    return f"{entry['zh']} {entry['en']}" if both else str(entry["en"])
