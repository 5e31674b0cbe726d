"""Adversarial review of the refused Bundles kept as evidence: every Bundle refused for
its signatures (or for having none) kept its bytes in ``inbound_bundles`` with no
limit, so a partner (its credentials stolen, or hostile) could fill the disk by sending
unsigned Bundles of 16 MiB. They are now bounded per partner: the newest
``inbound_refused_keep`` rows in at most ``inbound_refused_bytes`` (the newest always
kept), the oldest pruned first, the pruning logged without patient data. On SQLite and
PostgreSQL."""

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


def _unsigned(referral: dict[str, Any], n: int, base: str = "") -> bytes:
    """The golden referral (许嘉玮 / 許嘉瑋), unsigned, under Bundle identifier ``n``
    (with its system under ``base``: another sender's)."""
    bundle = copy.deepcopy(referral)
    bundle["identifier"]["value"] = f"NSCH-REFUSED-{n}"
    if base:
        bundle["identifier"]["system"] = f"{base}/sid/hl7v2-message"
    return orjson.dumps(bundle)


def _send(settings: Settings, body: bytes, partner: str) -> int:
    store = open_store(settings)
    try:
        return Inbound(settings, store).receive(body, PartnerAuth(partner, "bearer")).status
    finally:
        store.close()


def _kept(settings: Settings, partner: str) -> list[str]:
    """The identifiers of the partner's refused Bundles still kept, oldest first."""
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(bundles.c.identifier)
                .where(bundles.c.partner == partner, bundles.c.state == "refused")
                .order_by(bundles.c.id)
            ).scalars()
            return [str(i).rsplit("-", 1)[-1] for i in rows]
    finally:
        store.close()


def test_refused_bundles_are_kept_up_to_a_count_per_partner(
    make: Make, referral: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    settings = make("inbound_refused_keep = 3\n")
    njmu2 = _unsigned(referral, 0, "https://fhir.njmu2.example.cn")
    assert _send(settings, njmu2, "njmu2") == 422  # another partner's
    caplog.set_level(logging.INFO, logger="gateway.inbound")
    for n in range(1, 6):
        assert _send(settings, _unsigned(referral, n), "nsch") == 422
    assert _kept(settings, "nsch") == ["3", "4", "5"]  # the oldest pruned first
    assert _kept(settings, "njmu2") == ["0"]  # each partner's own bound
    said = [r.getMessage() for r in caplog.records if "pruned" in r.getMessage()]
    assert len(said) == 2 and "nsch" in said[0] and "inbound_refused_keep 3" in said[0]
    for secret in ("许嘉玮", "許嘉瑋", "0098765", "K583726A", "REF20260618001"):
        assert not any(secret in r.getMessage() for r in caplog.records)


def test_refused_bundles_are_kept_up_to_a_size_per_partner(
    make: Make, referral: dict[str, Any]
) -> None:
    size = len(_unsigned(referral, 1))
    settings = make(f"inbound_refused_bytes = {size * 2 + size // 2}\n")
    for n in range(1, 5):
        assert _send(settings, _unsigned(referral, n), "nsch") == 422
    assert _kept(settings, "nsch") == ["3", "4"]
    # a bound smaller than one Bundle still keeps the newest: the evidence of the last
    smaller = make("inbound_refused_bytes = 1024\n")
    assert _send(smaller, _unsigned(referral, 5), "nsch") == 422
    assert _kept(smaller, "nsch") == ["5"]


def test_the_bounds_are_settings_with_defaults(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    defaults = Settings.load(home=tmp_path, env={})
    assert defaults.inbound_refused_keep == 100
    assert defaults.inbound_refused_bytes == 64 * 1024 * 1024
    env = {"GATEWAY_INBOUND_REFUSED_KEEP": "7", "GATEWAY_INBOUND_REFUSED_BYTES": "2048"}
    given = Settings.load(home=tmp_path, env=env)
    assert (given.inbound_refused_keep, given.inbound_refused_bytes) == (7, 2048)
    for bad in ({"GATEWAY_INBOUND_REFUSED_KEEP": "0"}, {"GATEWAY_INBOUND_REFUSED_BYTES": "10"}):
        with pytest.raises(ConfigError):
            Settings.load(home=tmp_path, env=bad)
