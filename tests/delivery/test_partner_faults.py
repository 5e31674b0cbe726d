"""Ambiguous sends against the real partner server: its ``drop`` fault reads a request
and closes the connection unanswered (nothing written), ``slow`` answers after the read
timeout (written). Either way the worker asks before sending again, and every
identifier is at the partner once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.outputs import GOLDEN, bundles
from tests.partner.conftest import PartnerServer

from .test_partner_delivery import _conditions

AMBIGUOUS = DeliveryConfig(
    backoff_base=0.05, backoff_cap=0.2, max_attempts=50, breaker_threshold=50, read_timeout=1.0
)


@pytest.mark.parametrize("mode", ["drop", "slow:1.5"])
def test_ambiguous_faults_are_asked_about_and_nothing_arrives_twice(
    mode: str, partner: PartnerServer, tmp_path: Path
) -> None:
    partner.reset()
    # The faults must hit the sends (the overwrite check, a POST too, is tested apart).
    medplum = Partner("partner", partner.base, max_entries=8, check_overwrite=False)
    paths = sorted(GOLDEN.glob("hl7v2/**/*.expected.json"))[:4]
    golden = [b for p in paths for b in bundles(p, p.name)]
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    rows = [outbox.enqueue(medplum, b, label=name)[0] for name, b in golden]
    fault = {"mode": mode, "count": 3}
    partner.http.post("/$fault", json=fault).raise_for_status()
    with Deliverer(outbox, {"partner": medplum}, AMBIGUOUS, rng=random.Random(6)) as deliverer:
        for _ in range(500):
            deliverer.run_once()
            if all(outbox.require(r).state == "delivered" for r in rows):
                break
    assert [outbox.require(r).state for r in rows] == ["delivered"] * len(rows)
    events = [e for r in rows for e in outbox.events(r)]
    assert sum(e.to_state == "waiting" for e in events) == 3  # each fault: ambiguous
    asked = [e.reason for e in events if e.from_state == "waiting"]
    assert len(asked) == 3 and all(r.startswith("asked: ") for r in asked)
    conditions = set().union(*(_conditions(b) for _, b in golden))
    counts = {c: len(partner.search(f"{c[0]}?{c[1]}={c[2]}")) for c in sorted(conditions)}
    assert {c: n for c, n in counts.items() if n != 1} == {}
    store.close()
