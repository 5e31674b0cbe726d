"""Messages the MLLP listener refused for their sender, kept in a store as the listener
keeps them: its own ``MllpServer.answer`` given the client certificate a TLS handshake
gives it (the same refusals over real TLS: tests/listeners/test_mllp_sender.py). For the
tests of reprocessing them: the CLI, the API, the console."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from gateway import Settings
from gateway.listeners import ClientCertificate, MllpServer, StoreWriter
from gateway.store import MessageFilter, Store

__all__ = ["HKPMC_NAME", "NSCH_NAME", "Kept", "home", "keep", "keep_three", "nsch_referral"]

REPO = Path(__file__).resolve().parents[1]
NSCH_NAME = "广州市第一人民医院南沙医院"
HKPMC_NAME = "大灣區醫療集團香港合作醫療中心"


def _example(name: str) -> bytes:
    """An example message with CR segment ends, in original acknowledgement mode."""
    data = (REPO / "examples" / name).read_bytes()
    data = data.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r") + b"\r"
    return data.replace(b"|AL|NE|", b"|||", 1)


def nsch_referral() -> bytes:
    """南沙医院's referral to HKPMC: MSH-4 NSCH, control id NSCH20260618143000017."""
    return _example("hl7v2/ref_i12_nsch_to_hkpmc.hl7")


def home(tmp_path: Path) -> Settings:
    """A gateway home whose store is a SQLite file in it (the CLI opens it too)."""
    folder = tmp_path / "home"
    folder.mkdir()
    url = f"sqlite:///{folder / 'gateway.db'}"
    (folder / "gateway.toml").write_text(f'database_url = "{url}"\n', encoding="utf-8")
    return Settings.load(home=folder, env={})


def keep(settings: Settings, store: Store, data: bytes, institution: str | None, name: str) -> int:
    """``data`` sent over a connection whose certificate is ``name``'s, naming the
    network's ``institution`` (None: none); returns the stored message's id."""

    async def answer() -> None:
        writer = StoreWriter(store)
        try:
            server = MllpServer(settings, writer)
            found = server.network.find(institution) if institution else None
            await server.answer(data, "10.0.0.9:40000", ClientCertificate(name, found))
        finally:
            writer.close()

    asyncio.run(answer())
    control_id = data.split(b"\r")[0].split(b"|")[9].decode()
    [row] = store.find(MessageFilter(control_id=control_id)).items
    return row.id


@dataclasses.dataclass(frozen=True)
class Kept:
    mismatch: int  # NSCH's referral sent by HKPMC (intake.mllp-sender-mismatch)
    no_institution: int  # a person's certificate (intake.mllp-client-no-institution)
    mislabelled: int  # HKPMC's own, refused for its charset: reprocessing is for it


def keep_three(settings: Settings, store: Store) -> Kept:
    """Three messages the listener refused (``rejected``), two for their sender."""
    lax2 = _example("hl7v2/ref_i12_lax2_to_njmu2.hl7")  # GB 18030, MSH-4 LAX2
    # HKPMC's referral in Big5, declared ISO 8859-1: refused, intake.charset-mislabelled
    big5 = _example("hl7v2/ref_i12_hkpmc_to_nsch.hl7")
    mislabelled = big5.replace(b"|BIG-5\r", b"|8859/1\r", 1)
    assert mislabelled != big5
    kept = Kept(
        keep(settings, store, nsch_referral(), "HKPMC", HKPMC_NAME),
        keep(settings, store, lax2, None, "刘梅"),
        keep(settings, store, mislabelled, "HKPMC", HKPMC_NAME),
    )
    assert {m.id: m.state for m in store.find().items} == dict.fromkeys(
        (kept.mismatch, kept.no_institution, kept.mislabelled), "rejected"
    )
    return kept
