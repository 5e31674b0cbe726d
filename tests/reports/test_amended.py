"""An English report issued before the Chinese report was amended translates a version
that no longer stands: shown beside the amended Chinese text it would read as its
translation. The English part is then pending, with a note saying why."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.reports import ReportVariants

from .conftest import ENGLISH_CONCLUSION, copy_of, report_of

PENDING = "https://fhir-gateway.example.org/StructureDefinition/translation-pending"


def _revised(nansha: dict[str, Any], status: str, issued: str | None) -> bytes:
    bundle = copy_of(nansha)
    report = report_of(bundle)
    report["status"] = status
    if issued is None:
        del report["issued"]
    else:
        report["issued"] = issued
    return orjson.dumps(bundle)


@pytest.mark.parametrize("status", ["amended", "corrected", "appended"])
@pytest.mark.parametrize("lang", ["en", "bilingual"])
def test_an_english_report_older_than_the_amendment_is_pending(
    variants: ReportVariants,
    nansha: dict[str, Any],
    english: dict[str, Any],
    status: str,
    lang: str,
) -> None:
    # the English report was issued 2026-06-17T16:30+08:00; the amendment at 18:00
    source = _revised(nansha, status, "2026-06-17T10:00:00Z")
    variant = variants.variant(source, lang, orjson.dumps(english))
    report = report_of(variant.resource)
    assert variant.pending
    assert {"url": PENDING, "valueCode": "en"} in report["extension"]
    assert ENGLISH_CONCLUSION not in orjson.dumps(variant.resource).decode()
    assert variant.notes[-1].startswith(
        f"the report is {status} (issued 2026-06-17T10:00:00Z) after its English report "
        "(issued 2026-06-17T16:30:00+08:00)"
    )


def test_an_english_report_issued_after_the_amendment_is_joined(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    # amended at 07:00Z = 15:00+08:00, before the English report's 16:30+08:00
    source = _revised(nansha, "amended", "2026-06-17T07:00:00Z")
    variant = variants.variant(source, "en", orjson.dumps(english))
    assert not variant.pending
    assert report_of(variant.resource)["conclusion"] == ENGLISH_CONCLUSION


def test_an_amended_report_without_an_issue_time_cannot_be_told_and_is_pending(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    variant = variants.variant(_revised(nansha, "amended", None), "en", orjson.dumps(english))
    assert variant.pending
    assert "issued at a time not given" in variant.notes[-1]


def test_a_final_report_joins_its_english_report_whatever_the_times(
    variants: ReportVariants, nansha: dict[str, Any], english: dict[str, Any]
) -> None:
    source = _revised(nansha, "final", "2026-06-18T00:00:00Z")
    variant = variants.variant(source, "en", orjson.dumps(english))
    assert not variant.pending
