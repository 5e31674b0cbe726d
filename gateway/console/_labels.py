"""The console's labels (labels.yaml): one text per language for every key."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from pathlib import Path

from ..datafiles import load_data_file
from ._users import LANGS

__all__ = ["LABELS_FILE", "MISSING", "labels", "translate"]

LABELS_FILE = Path(__file__).with_name("labels.yaml")
MISSING = "⟦{}⟧"  # what an untranslated key shows as: visible, and what the tests look for


@cache
def labels() -> dict[str, Mapping[str, str]]:
    """``group.key`` → {language: text}."""
    data = load_data_file(LABELS_FILE)
    return {f"{group}.{key}": texts for group, keys in data.items() for key, texts in keys.items()}


def translate(lang: str, key: str) -> str:
    texts = labels().get(key)
    if texts is None or lang not in LANGS or not texts.get(lang):
        return MISSING.format(key)
    return str(texts[lang])
