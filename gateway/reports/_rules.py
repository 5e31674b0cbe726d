"""The variant rules and label texts, read from ``mappings/reports/`` (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..datafiles import load_data_file
from ..errors import ConfigError

__all__ = ["Rules"]

_LABEL_KEYS = (
    *("title", "patient", "name", "sex", "birth_date", "mrn", "exam", "study_date"),
    *("accession", "findings", "impression", "signed_by", "issued", "status"),
    *("performed_at", "interpreted_at", "pending", "none", "sexes", "statuses"),
    *("report_number", "local_radiologist", "expert_radiologist", "radiologist"),
    *("signature", "signature_name", "signature_role", "signature_institution"),
    *("signature_time", "not_reported", "page"),
)
_CUTS = ("sc", "tc", "hk")


@dataclass(frozen=True, slots=True)
class Rules:
    order: tuple[str, ...]
    aliases: dict[str, str]  # any accepted tag (lower case) → variant language
    chinese: frozenset[str]
    network_keys: dict[str, tuple[str, ...]]
    conversions: dict[tuple[str, str], str]  # (from, to) → OpenCC configuration
    default_chinese: str
    narrative: dict[str, tuple[str, ...]]
    findings: frozenset[tuple[str, str]]
    generic_codes: frozenset[tuple[str, str]]
    translation_of: str
    pending_url: str
    data_absent_reason: dict[str, Any]
    forms: dict[str, tuple[str, ...]]
    verbatim: dict[str, frozenset[str]]  # resource type → elements never converted
    fonts: dict[str, str]  # language → font cut (sc, tc, hk)
    fallback_date: datetime
    labels: dict[str, dict[str, Any]]
    template: str

    @classmethod
    def load(cls, folder: Path) -> Rules:
        where = folder / "variants.yaml"
        raw = load_data_file(where)
        try:
            order = tuple(str(x) for x in raw["order"])
            langs: dict[str, Any] = raw["languages"]
            aliases = {lang.lower(): lang for lang in order}
            for lang in order:
                for alias in langs[lang].get("aliases") or ():
                    aliases.setdefault(str(alias).lower(), lang)
            conversions = {}
            for pair, config in raw["conversions"].items():
                source, _, target = str(pair).partition(">")
                conversions[(source, target)] = str(config)
            labels = load_data_file(folder / "labels.yaml")
            for lang in order:
                missing = [k for k in _LABEL_KEYS if k not in (labels.get(lang) or {})]
                if missing:
                    raise ConfigError(
                        "report-labels", f"{folder / 'labels.yaml'}: {lang} lacks {missing}"
                    )
            rules = cls(
                order=order,
                aliases=aliases,
                chinese=frozenset(lang for lang in order if langs[lang].get("chinese")),
                network_keys={lang: tuple(langs[lang].get("network") or ()) for lang in order},
                conversions=conversions,
                default_chinese=str(raw["default_chinese"]),
                narrative={k: tuple(v) for k, v in raw["narrative"].items()},
                findings=frozenset((c["system"], c["code"]) for c in raw["findings"]),
                generic_codes=frozenset(
                    (c["system"], c["code"]) for c in raw["generic_report_codes"]
                ),
                translation_of=str(raw["translation_of"]),
                pending_url=str(raw["pending"]["url"]),
                data_absent_reason=dict(raw["pending"]["data_absent_reason"]),
                forms={k: tuple(v) for k, v in raw["forms"].items()},
                verbatim={str(k): frozenset(map(str, v)) for k, v in raw["verbatim"].items()},
                fonts={lang: str(raw["fonts"][lang]) for lang in order},
                fallback_date=datetime.fromisoformat(str(raw["fallback_date"])),
                labels={lang: dict(labels[lang]) for lang in order},
                template=(folder / "report.html").read_text(encoding="utf-8"),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ConfigError("report-rules", f"{where}: malformed ({exc!r})") from None
        except OSError as exc:
            raise ConfigError("report-rules", f"{folder}: {exc.strerror}") from None
        for lang in (rules.default_chinese, *rules.forms, *sum(rules.forms.values(), ())):
            if lang not in order:
                raise ConfigError("report-rules", f"{where}: {lang!r} is not in order {order}")
        bad = {lang: cut for lang, cut in rules.fonts.items() if cut not in _CUTS}
        if bad:
            raise ConfigError("report-rules", f"{where}: fonts {bad}: a cut is one of {_CUTS}")
        return rules

    def columns(self, value: str) -> tuple[str, ...] | None:
        """The languages of a bilingual request written ``zh-Hant-HK+en`` (or with spaces,
        as a URL query decodes an unescaped '+'; None when
        ``value`` is not one, or names a language twice or one that is not a variant)."""
        parts = value.replace("+", " ").split()  # a URL query's '+' arrives as a space
        if len(parts) < 2:
            return None
        found = tuple(self.language(part) for part in parts)
        if any(lang is None for lang in found) or len(set(found)) != len(found):
            return None
        return tuple(str(lang) for lang in found)

    def language(self, tag: str | None) -> str | None:
        """The variant language a BCP-47 tag stands for (None when it is none of them)."""
        return self.aliases.get(tag.lower()) if tag else None

    def label(self, lang: str, key: str) -> str:
        return str(self.labels[lang][key])

    def coded_label(self, lang: str, table: str, code: str | None) -> str | None:
        if not code:
            return None
        value = self.labels[lang][table].get(code)
        return str(value) if value else code
