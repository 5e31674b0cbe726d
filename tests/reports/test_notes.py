"""Notes (Annotation.text) are clinical free text: a Chinese note is script-converted or,
in English, absent (never machine-translated); a note written in English is the
author's own words in every variant. A bilingual variant never presents one note as
the translation of another."""

from __future__ import annotations

import json
from typing import Any

from gateway.reports import ReportVariants

from .conftest import TRANSLATION, english_bundle, nansha_bundle, report_of, resource_of

CHINESE_NOTE = "与2025年3月胸部CT比较，结节无明显变化。"
ENGLISH_NOTE = "Compared with the outside CT of 2025-03-02 (Queen Mary Hospital)."


def _bytes(resource: dict[str, Any]) -> bytes:
    return json.dumps(resource, ensure_ascii=False).encode("utf-8")


def _with_notes() -> bytes:
    bundle = nansha_bundle()
    findings = resource_of(bundle, report_of(bundle)["result"][0]["reference"])
    findings["note"] = [{"text": CHINESE_NOTE}, {"text": ENGLISH_NOTE}]
    return _bytes(bundle)


def _notes(variants: ReportVariants, lang: str) -> list[dict[str, Any]]:
    out = variants.variant(_with_notes(), lang, _bytes(english_bundle())).resource
    notes: list[dict[str, Any]] = resource_of(out, report_of(out)["result"][0]["reference"])["note"]
    return notes


def test_a_traditional_variant_keeps_the_english_note(variants: ReportVariants) -> None:
    texts = [n["text"] for n in _notes(variants, "zh-Hant-HK")]
    assert texts == ["與2025年3月胸部CT比較，結節無明顯變化。", ENGLISH_NOTE]


def test_an_english_variant_keeps_only_the_english_note(variants: ReportVariants) -> None:
    assert [n["text"] for n in _notes(variants, "en")] == [ENGLISH_NOTE]


def test_no_note_is_given_as_the_translation_of_another(variants: ReportVariants) -> None:
    chinese, english = _notes(variants, "bilingual")
    assert (chinese["text"], english["text"]) == (CHINESE_NOTE, ENGLISH_NOTE)
    for note in (chinese, english):
        for ext in note.get("_text", {}).get("extension", []):
            assert ext["url"] == TRANSLATION
            parts = {e["url"]: e for e in ext["extension"]}
            assert parts["lang"]["valueCode"] != "en"  # no English translation exists
            assert parts["content"]["valueString"] != ENGLISH_NOTE
