"""The alerts' texts in zh-Hans, zh-Hant-HK and en, from ``labels.yaml`` beside this
file: checked once when read (every key in every language), then formatted with the
partner's name from the network and the alert's numbers. No patient data goes in."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..datafiles import load_data_file
from ..errors import ConfigError
from ..network import Network
from ._config import KINDS, LEVELS, LISTENER_PREFIX

__all__ = ["LABELS_FILE", "LANGUAGES", "Labels", "labels", "partner_names"]

LANGUAGES = ("zh-Hans", "zh-Hant-HK", "en")
LABELS_FILE = Path(__file__).with_name("labels.yaml")
# The network's name keys for each language (Hong Kong reads the Traditional name).
_NAME_KEYS = {"zh-Hans": ("zh-Hans",), "zh-Hant-HK": ("zh-Hant-HK", "zh-Hant"), "en": ("en",)}


class Labels:
    def __init__(self, raw: Any, path: Path) -> None:
        self.raw = raw
        self.path = path
        self._check()

    def _check(self) -> None:
        def need(node: Any, key: str, empty: bool = False) -> None:
            if not isinstance(node, Mapping):
                raise ConfigError("alerts", f"{self.path}: {key}: expected a mapping of languages")
            for lang in LANGUAGES:
                if not isinstance(node.get(lang), str) or not (node[lang] or empty):
                    raise ConfigError("alerts", f"{self.path}: {key}.{lang}: missing text")

        for kind in KINDS:
            for part in ("name", "firing", "resolved"):
                need(self._get("kinds", kind, part), f"kinds.{kind}.{part}")
        for severity in (*LEVELS, "resolved"):
            need(self._get("severity", severity), f"severity.{severity}")
        for listener in ("mllp", "dicom"):
            need(self._get("listeners", listener), f"listeners.{listener}")
        need(self._get("subject"), "subject")
        need(self._get("test"), "test")
        for unit in ("d", "h", "m", "s", "join"):
            need(self._get("units", unit), f"units.{unit}", empty=unit == "join")

    def _get(self, *keys: str) -> Any:
        node = self.raw
        for key in keys:
            node = node.get(key) if isinstance(node, Mapping) else None
        return node

    def text(self, lang: str, *keys: str, **values: Any) -> str:
        template: str = self._get(*keys)[lang]
        return template.format(**values)

    def texts(self, *keys: str, **values: Mapping[str, Any]) -> dict[str, str]:
        """One text per language; each value given per language."""
        return {
            lang: self.text(lang, *keys, **{k: v[lang] for k, v in values.items()})
            for lang in LANGUAGES
        }

    def value(self, kind: str, number: float) -> dict[str, str]:
        """A count, or (oldest_age) a duration in each language's units."""
        if kind != "oldest_age":
            text = f"{number:g}" if number != int(number) else str(int(number))
            return dict.fromkeys(LANGUAGES, text)
        return {lang: self.duration(lang, number) for lang in LANGUAGES}

    def duration(self, lang: str, seconds: float) -> str:
        left = int(seconds)
        parts: list[str] = []
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
            if left >= size or (unit == "s" and not parts):
                parts.append(self.text(lang, "units", unit, n=left // size))
                left %= size
            if len(parts) == 2:
                break
        return self.text(lang, "units", "join").join(parts)


@lru_cache(maxsize=4)
def labels(path: Path = LABELS_FILE) -> Labels:
    return Labels(load_data_file(path), path)


def partner_names(network: Network | None, partner: str) -> dict[str, str]:
    """The partner's name in each language (its key when the network does not know it);
    a listener's (``listener:mllp``) from the labels."""
    if partner.startswith(LISTENER_PREFIX):
        names = labels()._get("listeners", partner.removeprefix(LISTENER_PREFIX))
        return {lang: str(names[lang]) if names else partner for lang in LANGUAGES}
    inst = network.find(partner) if network is not None else None
    out = {}
    for lang in LANGUAGES:
        name = None
        if inst is not None:
            name = next((inst.names[k] for k in _NAME_KEYS[lang] if k in inst.names), None)
        out[lang] = name or (inst.name(lang) if inst is not None else None) or partner
    return out
