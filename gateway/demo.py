"""``gateway demo``: run the demo network's sample records through the pipeline.

1. Referrals and orders: every file in ``examples/hl7v2/``.
2. The imaging story (``examples/imaging/``): the Lai'an head CT (DICOM) and its
   co-branded reports (ORU from Nanjing, CDA), the Nansha CTA (DICOM) with the Chinese
   report and the Hong Kong radiologist's English one.
3. Report variants, each as its receiving partner prefers (``report_variant`` in
   seeds/network.yaml): the Nansha report with the Hong Kong radiologist's English one
   for the Hong Kong centre (zh-Hant-HK + en) and for the Nansha clinic (all three),
   and the co-branded Lai'an CT report (performed at Lai'an, reported by the Nanjing
   expert; the CDA names both radiologists) for Lai'an (zh-Hans).
4. The gateway path (gateway/demo_gateway.py): the Nansha referral to Hong Kong sent by
   one gateway (A, nsch) to another (B, hkpmc), both running in this process on
   127.0.0.1 — stored, converted, routed, decided by the cross-border policy, signed,
   delivered, verified and received at B, accepted there, the status back at A, both
   audit logs verified.

Bundles go under ``$GATEWAY_HOME/out/demo/<file>/<id>.json``, variants under
``$GATEWAY_HOME/out/demo/variants/``, the two gateways' homes under
``$GATEWAY_HOME/out/demo/gateway/`` (made again each run). Records that fail on purpose
(the broken message in the batch file) are shown with their reason; any step of section
4 that fails is one ``error`` line and the exit code is 1.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

from .config import Settings
from .datafiles import data_dir
from .demo_gateway import run_gateway_path
from .envelope import Record
from .outputs import output_stem
from .pipeline import Converter, dump_json

__all__ = ["run_demo"]

# (report, English report or None, receiving partner, output name): the story's last
# step. Each partner gets the variant it prefers in the network (seeds/network.yaml,
# report_variant): the Hong Kong centre Hong Kong Traditional beside English, the
# Nansha clinic all three languages, Lai'an (the co-branded report of two mainland
# hospitals) Simplified Chinese.
VARIANTS = [
    ("oru_r01_nsch_cta_zh.hl7", "oru_r01_hkpmc_cta_en.hl7", "HKPMC", "nsch-cta-for-hkpmc"),
    ("oru_r01_nsch_cta_zh.hl7", "oru_r01_hkpmc_cta_en.hl7", "NSGP", "nsch-cta-for-nsgp"),
    ("lax2-ct-report-cobranded.xml", None, "LAX2", "lax2-ct-cobranded-for-lax2"),
]


def _resource_summary(bundle: dict[str, object]) -> str:
    entries = bundle.get("entry") or []
    assert isinstance(entries, list)
    counts = Counter(e["resource"]["resourceType"] for e in entries)
    return ", ".join(f"{n} {t}" for t, n in sorted(counts.items()))


class _Tally:
    def __init__(self, out: TextIO, target: Path) -> None:
        self.out, self.target = out, target
        self.converted = self.failed = 0
        self.bundles: dict[str, Record] = {}  # input file name → its (last) good record

    def show(self, name: str, records: Iterable[Record]) -> None:
        folder = self.target / Path(name).stem
        for record in records:
            if record.ok and record.bundle is not None and record.bundle_json is not None:
                self.converted += 1
                self.bundles[name] = record
                folder.mkdir(parents=True, exist_ok=True)
                ident = output_stem(record.control_id) if record.control_id else str(record.index)
                (folder / f"{ident}.json").write_bytes(record.bundle_json)
                kind = record.message_type or record.format
                self.out.write(
                    f"  ok    {name:<34} {kind:<12} {record.charset or '':<10} "
                    f"→ {_resource_summary(record.bundle)}\n"
                )
            else:
                self.failed += 1
                error = record.errors[0]
                self.out.write(
                    f"  error {name:<34} {error.location or ''}: {error.message} [{error.code}]\n"
                )
            for warning in record.warnings:
                self.out.write(f"        {warning.line()}\n")


def _imaging_inputs(folder: Path) -> list[Path]:
    """The story in the order it happens: studies first, then reports."""
    studies = sorted(p for p in folder.iterdir() if p.is_dir() and p.suffix == ".study")
    reports = sorted(p for p in folder.iterdir() if p.suffix in (".hl7", ".xml"))
    return studies + reports


def _variants(settings: Settings, tally: _Tally, out: TextIO) -> None:
    from .reports import ReportVariants

    maker = ReportVariants(settings)
    folder = tally.target / "variants"
    folder.mkdir(parents=True, exist_ok=True)
    for report, english, partner, name in VARIANTS:
        original = tally.bundles.get(report)
        if original is None or original.bundle_json is None:
            out.write(f"  skip  {name}: {report} did not convert\n")
            continue
        linked = tally.bundles.get(english) if english else None
        lang = maker.preferred(partner)
        variant = maker.variant(
            original.bundle_json, lang, linked.bundle_json if linked is not None else None
        )
        (folder / f"{name}.json").write_bytes(dump_json(variant.resource))
        (folder / f"{name}.html").write_bytes(variant.html)
        (folder / f"{name}.pdf").write_bytes(variant.pdf)
        state = "English pending" if variant.pending else "complete"
        out.write(f"  ok    {name:<34} {lang:<22} {state:<10} → .json, .html, .pdf\n")


def run_demo(settings: Settings, out: TextIO) -> int:
    converter = Converter(settings)
    examples = data_dir("examples")
    target = settings.out_dir / "demo"
    tally = _Tally(out, target)

    files = sorted(p for p in (examples / "hl7v2").iterdir() if p.suffix == ".hl7")
    out.write(
        f"FHIR gateway demo — network: {settings.network}\n"
        f"1. referrals and orders: {len(files)} sample files from {examples / 'hl7v2'}\n\n"
    )
    for path in files:
        tally.show(path.name, converter.convert(path.read_bytes(), source=path.name))

    imaging = _imaging_inputs(examples / "imaging")
    out.write(
        f"\n2. the imaging story: {len(imaging)} studies and reports from "
        f"{examples / 'imaging'}\n\n"
    )
    for path in imaging:
        tally.show(path.name, converter.convert_path(path))

    out.write("\n3. report variants (co-branded, bilingual; HTML and PDF)\n\n")
    _variants(settings, tally, out)

    out.write(
        "\n4. the gateway path: the referral from Nansha (A, nsch) to Hong Kong (B, hkpmc), "
        "two gateways on 127.0.0.1\n\n"
    )
    started = time.monotonic()
    failed, crossing = run_gateway_path(target / "gateway", out)
    took = time.monotonic() - started

    out.write(
        f"\nconverted {tally.converted} records, {tally.failed} refused with a reason "
        f"(the batch file holds one broken message on purpose).\n"
        + (
            f"The gateway path: FAILED (the error line above; the gateways' log: {crossing.log})\n"
            if failed
            else f"The gateway path: {len(crossing.lines)} steps ok in {took:.1f} s.\n"
        )
        + f"Bundles are in {target}\n"
        f"Report variants and their PDFs are in {target / 'variants'}\n"
        + crossing.closing()
        + "Next: `gateway convert FILE` for your own records, "
        "`gateway report variants REPORT.json --lang bilingual --english EN.json --pdf OUT.pdf`, "
        "`gateway serve` for the API.\n"
    )
    return 0 if tally.converted and not failed else 1
