"""Against the real partner server (../shared/partner-fhir: Medplum's router, strict
conditional references, atomic transactions, its 8-entry limit): every golden Bundle
queued, the partner down (503) for a while and back, the worker run until idle:
everything delivered, in order per patient, nothing twice (each identifier once at the
partner)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from gateway.delivery import Deliverer, DeliveryConfig, Outbox
from gateway.partners import Partner
from gateway.store import Store
from tests.outputs import GOLDEN, bundles
from tests.partner.conftest import PartnerServer

# Short waits (real time): the test is about outcomes, not timing.
FAST = DeliveryConfig(
    backoff_base=0.05,
    backoff_cap=0.2,
    max_attempts=50,
    breaker_threshold=3,
    breaker_cooldown=0.2,
    read_timeout=30,
)


def _conditions(bundle: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(type, parameter, value) of every conditional entry: what must exist once."""
    out = set()
    for entry in bundle.get("entry") or []:
        request = entry.get("request") or {}
        url = str(request.get("url") or "")
        kind, _, query = url.partition("?")
        query = str(request.get("ifNoneExist") or query)
        out |= {(kind, k, v) for k, v in parse_qsl(query)}
    return out


def test_goldens_survive_a_partner_outage_delivered_once(
    partner: PartnerServer, tmp_path: Path
) -> None:
    partner.reset()
    medplum = Partner("partner", partner.base, max_entries=8)
    golden = [b for p in sorted(GOLDEN.glob("**/*.expected.json")) for b in bundles(p, p.name)]
    assert len(golden) >= 20
    store = Store.open(f"sqlite:///{tmp_path / 'gateway.db'}")
    outbox = Outbox(store)
    rows = [outbox.enqueue(medplum, b, label=name)[0] for name, b in golden]
    partner.http.post("/$fault", json={"mode": "503", "count": 6}).raise_for_status()
    with Deliverer(outbox, {"partner": medplum}, FAST, rng=random.Random(5)) as deliverer:
        for _ in range(2000):
            deliverer.run_once()
            if all(outbox.require(r).state in ("delivered", "dead") for r in rows):
                break
    assert partner.http.get("/$fault").json()["mode"] == "none"  # the outage was used up
    states = Counter(outbox.require(r).state for r in rows)
    assert states == {"delivered": len(rows)}, [
        (outbox.require(r).label, outbox.require(r).last_response)
        for r in rows
        if outbox.require(r).state != "delivered"
    ]
    retried = [r for r in rows if any(e.to_state == "retrying" for e in outbox.events(r))]
    assert retried, "the 503s reached no record"
    # In order per patient: none of a patient's records was sent before the one queued
    # ahead of it had been delivered, outage or not.
    per_patient: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        key = outbox.require(r).order_key
        if key:
            per_patient[key].append(r)
    assert any(len(ids) > 1 for ids in per_patient.values())
    for ids in per_patient.values():
        for earlier, later in pairwise(ids):
            delivered = max(e.at for e in outbox.events(earlier) if e.to_state == "delivered")
            first_send = min(e.at for e in outbox.events(later) if e.to_state == "sending")
            assert delivered <= first_send, (earlier, later)
    # Nothing twice: every conditional entry's identifier matches exactly one resource.
    conditions = set().union(*(_conditions(b) for _, b in golden))
    counts = {c: len(partner.search(f"{c[0]}?{c[1]}={c[2]}")) for c in sorted(conditions)}
    assert {c: n for c, n in counts.items() if n != 1} == {}
    store.close()
