"""Refused Bundles kept as evidence are bounded per partner (test_adversarial_refused_
evidence.py) and also over all partners together: ``inbound_refused_total_bytes``, the
oldest pruned first whoever sent them (the newest always kept), logged with the partner
keys and a count only. Without it many partners, or many partner names from a
misconfigured network, each under its own bound, could still fill the disk. On SQLite
and PostgreSQL."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from gateway import Settings
from gateway.config import ConfigError
from gateway.inbound import Inbound, PartnerAuth, bundles
from gateway.store import open_store
from tests.store.dbs import BACKENDS, database

from .conftest import make_home

Make = Callable[[str], Settings]


@pytest.fixture(params=BACKENDS)
def make(request: pytest.FixtureRequest, tmp_path: Path, pki: Path) -> Iterator[Make]:
    """HKPMC's gateway on each database, with the extra settings given."""
    for url in database(request.param, tmp_path):

        def settings(extra: str, url: str = url) -> Settings:
            home = make_home(tmp_path / "hkpmc", pki, "hkpmc", {}).home
            toml = home / "gateway.toml"
            toml.write_text(toml.read_text() + f'database_url = "{url}"\n' + extra)
            return Settings.load(home=home, env={})

        yield settings


def _unsigned(referral: dict[str, Any], n: int, partner: str = "nsch") -> bytes:
    """The golden referral (许嘉玮 / 許嘉瑋), unsigned, under Bundle identifier ``n`` in
    the partner's own system."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"NSCH-REFUSED-{n}"
    bundle["identifier"]["system"] = f"https://fhir.{partner}.example.cn/sid/hl7v2-message"
    return orjson.dumps(bundle)


def _send(settings: Settings, body: bytes, partner: str) -> int:
    store = open_store(settings)
    try:
        return Inbound(settings, store).receive(body, PartnerAuth(partner, "bearer")).status
    finally:
        store.close()


def _kept(settings: Settings) -> list[tuple[str, str]]:
    """(partner, identifier number) of every refused Bundle still kept, oldest first."""
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(bundles.c.partner, bundles.c.identifier)
                .where(bundles.c.state == "refused")
                .order_by(bundles.c.id)
            ).all()
            return [(str(p), str(i).rsplit("-", 1)[-1]) for p, i in rows]
    finally:
        store.close()


def test_refused_bundles_are_bounded_over_all_partners(
    make: Make, referral: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    size = len(_unsigned(referral, 1))
    # each partner far under its own bound; three Bundles and a half in all
    settings = make(f"inbound_refused_total_bytes = {size * 3 + size // 2}\n")
    caplog.set_level(logging.INFO, logger="gateway.inbound")
    senders = ["nsch", "njmu2", "typo-1", "typo-2", "nsch"]  # misconfigured names too
    for n, partner in enumerate(senders):
        assert _send(settings, _unsigned(referral, n, partner), partner) == 422
    # the oldest went first, across partners: the three newest stay
    assert _kept(settings) == [("typo-1", "2"), ("typo-2", "3"), ("nsch", "4")]
    said = [r.getMessage() for r in caplog.records if "across partners" in r.getMessage()]
    assert len(said) == 2
    assert "nsch" in said[0] and "inbound_refused_total_bytes" in said[0]
    assert "njmu2" in said[1]
    for secret in ("许嘉玮", "許嘉瑋", "0098765", "K583726A", "REF20260618001"):
        assert not any(secret in r.getMessage() for r in caplog.records)


def test_the_newest_refused_bundle_always_stays(make: Make, referral: dict[str, Any]) -> None:
    settings = make("inbound_refused_total_bytes = 1024\n")  # smaller than one Bundle
    assert _send(settings, _unsigned(referral, 1), "nsch") == 422
    assert _send(settings, _unsigned(referral, 2, "njmu2"), "njmu2") == 422
    assert _kept(settings) == [("njmu2", "2")]


def test_the_overall_bound_is_a_setting_with_a_default(tmp_path: Path) -> None:
    assert Settings.load(home=tmp_path, env={}).inbound_refused_total_bytes == 1024**3
    env = {"GATEWAY_INBOUND_REFUSED_TOTAL_BYTES": "4096"}
    assert Settings.load(home=tmp_path, env=env).inbound_refused_total_bytes == 4096
    with pytest.raises(ConfigError, match="inbound_refused_total_bytes"):
        Settings.load(home=tmp_path, env={"GATEWAY_INBOUND_REFUSED_TOTAL_BYTES": "10"})
