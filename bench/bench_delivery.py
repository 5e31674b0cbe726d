"""Delivery benchmark: records/s from the store to a loopback partner, and each
record's latency from received to delivered (SQLite).

The partner is ``../shared/partner-fhir`` (Medplum's router; strict conditional
references, atomic transactions, its 8-entry limit), started on a free port. Each message
is a Lai'an → Nanjing referral (examples/hl7v2/ref_i12_lax2_to_njmu2.hl7) with its own
control id, referral id and MRN. It goes the whole way a listener's message goes: stored
(``Store.receive``), converted (``process_message``), then, inside the running
``DeliveryService`` of ``gateway serve``, routed, decided by the policy, queued and
delivered by the worker.

1. **burst**: N messages received as fast as the gateway converts them; throughput =
   N ÷ (first received → last delivered); latency includes the time spent queued.
2. **paced**: messages arrive at a fixed rate below that throughput; latency is then
   the path's own (received → delivered, p50 / p99).

    .venv/bin/python bench/bench_delivery.py [--records N] [--paced N] [--rate R]
        [--out bench/RESULTS.md | -]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _results  # bench/_results.py (this script's folder is on sys.path)
import httpx
import sqlalchemy as sa

from gateway import Converter, Settings
from gateway.delivery import DeliveryService, Outbound
from gateway.partners import Partner
from gateway.processing import process_message
from gateway.store import Incoming, Store, metadata, open_store

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
MARKERS = _results.markers("delivery", "bench/bench_delivery.py")
PARTNER_DIR = Path(os.environ.get("PARTNER_FHIR_DIR") or REPO.parent / "shared" / "partner-fhir")
SAMPLE = REPO / "examples" / "hl7v2" / "ref_i12_lax2_to_njmu2.hl7"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _partner_env(port: int) -> dict[str, str]:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return {
        **os.environ,
        "PARTNER_FHIR_HOME": os.environ.get(
            "PARTNER_FHIR_HOME", str(cache / "fhir-gateway" / "partner-fhir")
        ),
        "PARTNER_FHIR_PORT": str(port),
        "PARTNER_FHIR_CONDITIONAL_REFS": "strict",
        "PARTNER_FHIR_TRANSACTIONS": "on",
        "PARTNER_FHIR_VALIDATE": "on",
        "PARTNER_FHIR_FAIL": "none",
    }


def messages(count: int, start: int) -> list[bytes]:
    """``count`` distinct referrals: control id, referral id and MRN of their own."""
    raw = SAMPLE.read_bytes()
    out = []
    for n in range(start, start + count):
        out.append(
            raw.replace(b"LAX220260611101500003", b"LAX2BENCH%012d" % n)
            .replace(b"REF20260611001", b"REFBENCH%08d" % n)
            .replace(b"0012345", b"B%07d" % n)
        )
    return out


def delivered_latencies(store: Store, ids: list[int]) -> tuple[list[float], float]:
    """Per message: seconds from received to its outbox row delivered; and the span
    from the first received to the last delivered."""
    m, o, e = (metadata.tables[t] for t in ("messages", "outbox", "outbox_events"))
    query = (
        sa.select(m.c.id, m.c.received_at, sa.func.max(e.c.at))
        .join(o, o.c.message_id == m.c.id)
        .join(e, e.c.outbox_id == o.c.id)
        .where(m.c.id.in_(ids), e.c.to_state == "delivered")
        .group_by(m.c.id, m.c.received_at)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    if len(rows) != len(ids):
        raise SystemExit(f"{len(ids) - len(rows)} messages were not delivered")
    latencies = [(done - received).total_seconds() for _, received, done in rows]
    span = (max(r[2] for r in rows) - min(r[1] for r in rows)).total_seconds()
    return latencies, span


def partner_seconds(store: Store, ids: list[int]) -> float:
    """Seconds the worker spent sending (first ``sending`` → ``delivered`` of each row,
    summed): the partner's share of the run, its requests and answers."""
    o, e = (metadata.tables[t] for t in ("outbox", "outbox_events"))
    first = sa.func.min(sa.case((e.c.to_state == "sending", e.c.at)))
    done = sa.func.max(sa.case((e.c.to_state == "delivered", e.c.at)))
    query = (
        sa.select(first, done)
        .join(o, o.c.id == e.c.outbox_id)
        .where(o.c.message_id.in_(ids))
        .group_by(o.c.id)
    )
    with store.engine.connect() as conn:
        return sum((b - a).total_seconds() for a, b in conn.execute(query).all())


def _wait(store: Store, ids: list[int], limit: float) -> None:
    deadline = time.monotonic() + limit
    m = metadata.tables["messages"]
    while time.monotonic() < deadline:
        with store.engine.connect() as conn:
            left = conn.execute(
                sa.select(sa.func.count()).where(m.c.id.in_(ids), m.c.state != "delivered")
            ).scalar_one()
        if left == 0:
            return
        time.sleep(0.1)
    raise SystemExit("not delivered in time")


def run(store: Store, converter: Converter, batch: list[bytes], rate: float | None) -> list[int]:
    ids = []
    started = time.monotonic()
    for n, raw in enumerate(batch):
        if rate:  # the n-th message arrives n / rate seconds after the first
            time.sleep(max(0.0, n / rate - (time.monotonic() - started)))
        receipt = store.receive(Incoming(raw, "mllp", "hl7v2"))
        process_message(store, converter, receipt.id)  # as a listener, after its ACK
        ids.append(receipt.id)
    _wait(store, ids, 1800)
    return ids


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200, help="messages in the burst")
    parser.add_argument("--paced", type=int, default=40, help="messages arriving paced")
    parser.add_argument("--rate", type=float, default=2.0, help="paced arrivals per second")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if not (PARTNER_DIR / "start").is_file() or not (shutil.which("node") or shutil.which("npm")):
        raise SystemExit(f"the partner server is needed: {PARTNER_DIR} and node or npm")
    port = _port()
    env = _partner_env(port)
    subprocess.run([str(PARTNER_DIR / "start")], env=env, check=True, capture_output=True)
    base = f"http://127.0.0.1:{port}/fhir/R4"
    results: dict[str, tuple[int, list[float], float, float]] = {}
    try:
        for name, count, rate, start in (
            ("burst", args.records, None, 0),
            ("paced", args.paced, args.rate, 10**6),
        ):
            httpx.post(f"{base}/$reset", timeout=60).raise_for_status()
            with tempfile.TemporaryDirectory() as home:
                settings = dataclasses.replace(
                    Settings.load(home=home, env={}), delivery_poll_seconds=0.02
                )
                store = open_store(settings)
                converter = Converter(settings)
                outbound = Outbound(settings, store, partners={"njmu2": Partner("njmu2", base, 8)})
                service = DeliveryService(settings, store, outbound=outbound).start()
                try:
                    ids = run(store, converter, messages(count, start), rate)
                finally:
                    service.stop()
                latencies, span = delivered_latencies(store, ids)
                sending = partner_seconds(store, ids)
                store.close()
            results[name] = (count, latencies, span, sending)
            print(
                f"{name}: {count} in {span:.1f} s = {count / span:.1f}/s; latency p50 "
                f"{pct(latencies, 50):.3f} s, p99 {pct(latencies, 99):.3f} s",
                file=sys.stderr,
            )
    finally:
        subprocess.run([str(PARTNER_DIR / "stop")], env=env, capture_output=True, check=False)
    _write(args, results)
    return 0


def _write(
    args: argparse.Namespace, results: dict[str, tuple[int, list[float], float, float]]
) -> None:
    cpu = _results.cpu_model()
    load = os.getloadavg()[0]
    lines = [
        "## Delivery benchmark (bench/bench_delivery.py)",
        "",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, shared (load average {load:.1f} "
        "when the run ended); Python " + platform.python_version() + "; SQLite store",
        "- Partner: ../shared/partner-fhir on loopback (Medplum's router, strict "
        "conditional references, atomic transactions, validation on)",
        "- Each message: a distinct REF^I12 (Lai'an → Nanjing, 10 entries: 2 requests for "
        "the 8-entry limit), stored, converted, routed, decided by the policy (domestic: "
        "allowed), queued and delivered by `gateway serve`'s DeliveryService",
        "",
        "| run | messages | records/s (received → delivered, whole run) | latency p50 | "
        "latency p99 | sending (partner round trips) per record |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, (count, latencies, span, sending) in results.items():
        what = (
            "burst (latency includes queueing)"
            if name == "burst"
            else (f"paced at {args.rate:g}/s")
        )
        lines.append(
            f"| {what} | {count} | {count / span:.1f} | {pct(latencies, 50) * 1000:.0f} ms | "
            f"{pct(latencies, 99) * 1000:.0f} ms | {sending / count * 1000:.0f} ms |"
        )
    count, _, span, sending = results["burst"]
    share = sending / span * 100
    lines += [
        "",
        f"In the burst {share:.0f} % of the run is the worker waiting for the partner's "
        f"answers; the gateway's own work (store, convert, route, policy, queue, the outbox's "
        f"moves) is the rest, {(span - sending) / count * 1000:.0f} ms per record. The "
        "partner's in-memory store finds a conditional write's match by scanning, so each "
        "write costs more as it fills: the burst's rate falls with its size. The worker sends "
        "one request at a time (order per patient; one pooled connection in use). Latency is "
        "from `messages.received_at` to the outbox row's `delivered` event.",
    ]
    _results.emit(args.out, MARKERS, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
