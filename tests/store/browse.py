"""A gateway home for the browse/reprocess tests: a copy of the mappings with the
REF^I12 mapping switched off (the "bug"), a store with messages in it, and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway import Converter, Settings
from gateway.processing import process_message
from gateway.store import Incoming, Store

REPO = Path(__file__).resolve().parents[2]
REF = REPO / "mappings" / "hl7v2" / "messages" / "REF.yaml"
GB18030_REF = (REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7").read_bytes()
UTF8_ORU = (REPO / "examples" / "imaging" / "oru_r01_nsch_cta_zh.hl7").read_bytes()


def broken_home(tmp_path: Path, store_url: str) -> Settings:
    mappings = tmp_path / "mappings"
    shutil.copytree(REPO / "mappings", mappings)
    broken = REF.read_text(encoding="utf-8").replace(
        "messages: [REF^I12, REF^I14]", "messages: [REF^I14]"
    )
    assert broken != REF.read_text(encoding="utf-8")
    (mappings / "hl7v2" / "messages" / "REF.yaml").write_text(broken, encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    (home / "gateway.toml").write_text(
        f'mappings = "{mappings}"\ndatabase_url = "{store_url}"\n', encoding="utf-8"
    )
    return Settings.load(home=home, env={})


def fix_mapping(settings: Settings) -> None:
    shutil.copyfile(REF, settings.mappings / "hl7v2" / "messages" / "REF.yaml")


def fill(settings: Settings) -> tuple[int, int]:
    """(failed id, converted id): a GB 18030 referral the broken mapping fails, and a
    UTF-8 report that converts."""
    store = Store.for_home(settings.home, settings.database_url)
    converter = Converter(settings)
    failed = store.receive(Incoming(GB18030_REF, "mllp", peer="10.0.0.7:5000")).id
    converted = store.receive(Incoming(UTF8_ORU, "mllp", peer="10.0.0.8:5000")).id
    assert process_message(store, converter, failed).state == "failed"
    assert process_message(store, converter, converted).state == "converted"
    store.close()
    return failed, converted
