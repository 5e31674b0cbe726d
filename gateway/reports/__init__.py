"""Report variants: a DiagnosticReport in zh-Hans, zh-Hant-HK, English or bilingual,
rendered as co-branded HTML and PDF (docs/reports.md).

    variants = ReportVariants(settings)            # once: loads rules, terminology, network
    v = variants.variant(report_bytes, "bilingual", english_bytes)
    v.resource, v.pdf, v.html, v.pending

Surfaces: ``add_cli`` / ``cmd_report_variants`` (``gateway report variants``) and
``variant_response`` (the API's report-variant endpoint), which the API runs in the
worker processes of a ``VariantPool``.
"""

from ._cli import (
    CONTENT_TYPES,
    add_cli,
    cmd_report_variants,
    variant_response,
    variants_for,
)
from ._pdf import font_path
from ._pool import REPORT_WORKERS, VariantPool, WorkerCrash
from ._variants import BILINGUAL, ReportVariants, Variant

__all__ = [
    "BILINGUAL",
    "CONTENT_TYPES",
    "REPORT_WORKERS",
    "ReportVariants",
    "Variant",
    "VariantPool",
    "WorkerCrash",
    "add_cli",
    "cmd_report_variants",
    "font_path",
    "variant_response",
    "variants_for",
]
