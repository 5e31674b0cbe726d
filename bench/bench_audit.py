"""Audit trail cost: the whole outbound pipeline as `gateway serve` wires it, with the
audit trail on (every stage appends its events where it does in production) against
the same pipeline with ``audit_enabled = false``.

Per message (a never-seen NSCH → HKPMC referral: its own control id and MRN; the
patient's consent on file, so it is allowed, signed and sent):

1. ``Store.receive`` (the MLLP listener's commit, before the ACK);
2. ``process_message`` (decode, map, validate, serialise; the outcome's commit) with
   ``store_hook``: *received* and *converted* appended inside the outcome's transaction;
3. ``Outbound.process``: route, policy decision (*policy-decision* inside the decision's
   transaction), report variant, signing with NSCH's demo key (*signed*, its own commit),
   the outbox rows;
4. ``Deliverer.run_once`` to a partner answering at once in-process (httpx
   MockTransport: no network, so the pipeline is as short as it can be and the audit's
   share as large as it can be): the row's transitions, *delivery* (its own commit).

Both pipelines run in the same process on two SQLite stores (synchronous=FULL, as
shipped), in alternating order, ``--rounds`` rounds of ``--messages`` messages; the cost
is the median over rounds of (time with audit ÷ time without − 1): paired ratios, so a
machine busy with other jobs slows both sides of a pair alike. Wall clock (the fsync of
each commit is most of what the audit adds). The issue's bar: under 10 %.

    .venv/bin/python bench/bench_audit.py [--messages N] [--rounds R] [--out bench/RESULTS.md | -]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _results  # bench/_results.py (this script's folder is on sys.path)
import httpx
import orjson

from gateway import Converter, Settings
from gateway.audit import AuditLog, audit_log, store_hook
from gateway.datafiles import data_dir
from gateway.delivery import Deliverer, Outbound
from gateway.partners import configured_partners
from gateway.policy import Policy, PolicyRecords
from gateway.processing import process_message
from gateway.signing import make_demo_pki
from gateway.store import Incoming, Store, open_store

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
MARKERS = _results.markers("audit", "bench/bench_audit.py")
REFERRAL = (REPO / "examples" / "hl7v2" / "ref_i12_nsch_to_hkpmc.hl7").read_bytes()
HKID = "https://fhir-gateway.example.org/sid/hkid"
PURPOSE = "https://fhir-gateway.example.org/CodeSystem/transfer-purpose"


def message(n: int) -> bytes:
    """The referral with its own control id and MRN: a never-seen message (the same
    HKID, so one consent on file covers every one)."""
    control = b"NSCH20260618143000017"
    raw = REFERRAL.replace(control, f"BENCH{n:016d}".encode())
    return raw.replace(b"0098765", f"{n % 10_000_000:07d}".encode())


def consent() -> dict[str, Any]:
    """NSCH's patient's separate consent to the referral going to HKPMC."""
    v3 = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
    return {
        "resourceType": "Consent",
        "id": "bench-consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                 "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": HKID, "value": "K583726A"}},
        "dateTime": "2026-01-01",
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2030-12-31"},
            "actor": [
                {
                    "role": {"coding": [{"system": v3, "code": "IRCP"}]},
                    "reference": {
                        "identifier": {"system": "urn:ietf:rfc:3986",
                                       "value": "urn:oid:1.3.6.1.4.1.99999.1.1"}  # HKPMC
                    },
                }
            ],
            "purpose": [{"system": PURPOSE, "code": "referral"}],
        },
    }  # fmt: skip


def partner_answers(request: httpx.Request) -> httpx.Response:
    """A partner that applies every entry: a transaction-response, 201 each."""
    sent = orjson.loads(request.content)
    entries = [
        {"response": {"status": "201 Created", "location": f"{e['request']['url']}/x/_history/1"}}
        for e in sent.get("entry") or []
    ]
    body = {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
    return httpx.Response(200, json=body)


class Spent:
    """Wall and CPU seconds spent in the audit: inside ``AuditLog.record_guarded``, which
    every stage appends through, and in the store hook (which builds its events before
    appending); the audit-off side calls neither. The audit's own time, measured
    directly rather than as the difference of two noisy totals."""

    wall = 0.0
    cpu = 0.0
    depth = 0

    @classmethod
    def timed(cls, inner: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            cls.depth += 1
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return inner(*args)
            finally:
                cls.depth -= 1
                if cls.depth == 0:  # the outermost call counts, once
                    cls.wall += time.perf_counter() - wall
                    cls.cpu += time.thread_time() - cpu

        return run

    @classmethod
    def install(cls) -> None:
        AuditLog.record_guarded = cls.timed(AuditLog.record_guarded)  # type: ignore[method-assign]


def mock_client(partner: Any, config: Any) -> httpx.Client:
    return httpx.Client(
        base_url="http://partner.test/fhir", transport=httpx.MockTransport(partner_answers)
    )


@dataclasses.dataclass
class Pipeline:
    """One gateway home and its stages, audit on or off."""

    settings: Settings
    store: Store
    converter: Converter
    outbound: Outbound
    deliverer: Deliverer
    hook: Any
    log: AuditLog | None

    @classmethod
    def make(cls, home: Path, pki: Path, audited: bool, converter: Converter) -> Pipeline:
        home.mkdir()
        (home / "gateway.toml").write_text(
            f'institution = "nsch"\nsigning_keys = "{pki}"\nsigning_rules = "*/*=nsch"\n'
            f"audit_enabled = {'true' if audited else 'false'}\n",
            encoding="utf-8",
        )
        settings = Settings.load(home=home, env={})
        store = open_store(settings)
        records = PolicyRecords(store, Policy(settings), audit=audited)
        records.import_consent(consent())
        log = audit_log(store, settings)
        # HKPMC without its 8-entry limit: one transaction per record, so it is signed
        # (a Bundle taken in several requests goes unsigned) and every stage appends
        partners = {k: dataclasses.replace(p, max_entries=None) for k, p in
                    configured_partners(settings).items()}  # fmt: skip
        outbound = Outbound(settings, store, partners=partners)
        deliverer = Deliverer(outbound.outbox, outbound.partners, client_factory=mock_client,
                              audit=log)  # fmt: skip
        hook = store_hook(log, channel="mllp", peer="10.8.0.21:40112")
        hook = Spent.timed(hook) if hook is not None else None
        return cls(settings, store, converter, outbound, deliverer, hook, log)

    def one(self, raw: bytes) -> tuple[float, float]:
        """(wall, CPU) seconds of one message, the whole way."""
        wall, cpu = time.perf_counter(), time.thread_time()
        receipt = self.store.receive(Incoming(raw, "mllp", peer="10.8.0.21:40112"))
        process_message(self.store, self.converter, receipt.id, audit=self.hook)
        self.outbound.process(receipt.id)
        while self.deliverer.run_once():
            pass
        return time.perf_counter() - wall, time.thread_time() - cpu

    def close(self) -> None:
        self.deliverer.close()
        self.store.close()


def check(pipeline: Pipeline, count: int) -> dict[str, int]:
    """What the audited run logged per kind (every stage did write) and that every
    message was delivered."""
    states: dict[str, int] = {}
    for summary in pipeline.store.find(None, 10_000).items:  # type: ignore[arg-type]
        states[summary.state] = states.get(summary.state, 0) + 1
    kinds: dict[str, int] = {}
    if pipeline.log is not None:
        for entry in pipeline.log.rows():
            kinds[entry.kind] = kinds.get(entry.kind, 0) + 1
    return {**{f"state:{k}": v for k, v in states.items()}, **kinds}


def measure(count: int, rounds: int, warmup: int) -> dict[str, Any]:
    converter = Converter()
    Spent.install()
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        make_demo_pki(data_dir("seeds") / "network.yaml", pki)
        off = Pipeline.make(Path(tmp) / "off", pki, False, converter)
        on = Pipeline.make(Path(tmp) / "on", pki, True, converter)
        serial = 0

        def batch(size: int) -> list[tuple[bytes, bytes]]:
            """``size`` pairs of never-seen messages, one for each side."""
            nonlocal serial
            serial += size
            return [(message(2 * n), message(2 * n + 1)) for n in range(serial - size, serial)]

        for raw_off, raw_on in batch(warmup):  # caches, keys, variants loaded on both sides
            off.one(raw_off)
            on.one(raw_on)
        plain, audited, ratios, cpu_ratios = [], [], [], []
        inside: list[float] = []
        inside_cpu: list[float] = []
        for r in range(rounds):
            # message by message, alternating which side goes first: both sides of a
            # pair meet the same load, to within a few tens of milliseconds
            sums = {"off": [0.0, 0.0], "on": [0.0, 0.0]}
            Spent.wall = Spent.cpu = 0.0
            for i, (raw_off, raw_on) in enumerate(batch(count)):
                sides = [("off", off, raw_off), ("on", on, raw_on)]
                for name, pipeline, raw in sides if (i + r) % 2 == 0 else sides[::-1]:
                    wall, cpu = pipeline.one(raw)
                    sums[name][0] += wall
                    sums[name][1] += cpu
            plain.append(sums["off"][0] / count)
            audited.append(sums["on"][0] / count)
            ratios.append(sums["on"][0] / sums["off"][0])
            cpu_ratios.append(sums["on"][1] / sums["off"][1])
            inside.append(Spent.wall / sums["off"][0])
            inside_cpu.append(Spent.cpu / sums["off"][1])
        seen = check(on, count)
        print("off:", check(off, count), file=sys.stderr)
        off.close()
        on.close()
    return {
        "plain": statistics.median(plain),
        "audited": statistics.median(audited),
        "cost": statistics.median(ratios) - 1,
        "cpu_cost": statistics.median(cpu_ratios) - 1,
        "inside": statistics.median(inside),
        "inside_cpu": statistics.median(inside_cpu),
        "ratios": ratios,
        "seen": seen,
        "messages": warmup + rounds * count,  # per side
    }


def section(r: dict[str, Any], count: int, rounds: int, load: tuple[float, float, float]) -> str:
    per_message = {k: v / r["messages"] for k, v in r["seen"].items() if not k.startswith("state")}
    kinds = ", ".join(f"{k} {v:g}" for k, v in sorted(per_message.items()))
    spread = ", ".join(f"{x - 1:+.1%}" for x in r["ratios"])
    lines = [
        "## Audit trail cost (bench/bench_audit.py)",
        "",
        f"The whole outbound pipeline as `gateway serve` wires it (receive, convert, route, "
        f"policy, sign, outbox, deliver to an in-process partner), with the audit trail on "
        f"against `audit_enabled = false`; {rounds} rounds of {count} never-seen referrals "
        f"each side, alternating, on two SQLite stores (synchronous=FULL). Python "
        f"{platform.python_version()}, {platform.machine()}; taken under load: load average "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) on a 2-core VM shared "
        "with other jobs.",
        "",
        "| pipeline | ms per message (median) | messages/s |",
        "|---|---:|---:|",
        f"| audit off | {r['plain'] * 1000:.2f} | {1 / r['plain']:.1f} |",
        f"| audit on (every stage appends) | {r['audited'] * 1000:.2f} | {1 / r['audited']:.1f} |",
        "",
        f"**Cost of audit writing: {r['cost']:+.1%}** of the pipeline's time per message "
        f"(median of the rounds' paired ratios of wall-clock time: {spread}); in CPU time "
        f"of the pipeline's thread {r['cpu_cost']:+.1%}. Measured directly, the time spent "
        f"building and appending the events in `store_hook` and `AuditLog.record_guarded` "
        f"(the deferred appends, made inside other stages' commits, not counted) is "
        f"**{r['inside']:.1%}** of the audit-off pipeline's wall-clock time "
        f"({r['inside_cpu']:.1%} of its CPU time). The issue's bar is 10 %.",
        "",
        f"Events per message, as logged: {kinds}. Where they go: received and converted in "
        "the outcome's transaction, the decision in the decision's; signed and delivery "
        "(appended by the outbound path and the delivery worker outside a transaction of "
        "theirs) join the store's next write commit, the outbox rows and the row's "
        "transition (`AuditLog(defer=)`: docs/audit.md), instead of an fsync each. Each "
        "append: a SAVEPOINT, the state row swapped (size and frontier; read only when "
        "another writer changed it), one insert per event; O(log n) hashes (the "
        "frontier) and the event's RFC 8785 canonical JSON. Before this work (each of "
        "those two with a commit of its own, SQLAlchemy Core statements built per "
        "append) the same bench gave +18 % wall clock and +17 % CPU.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="-", help="bench/RESULTS.md (its section) or - (stdout)")
    args = parser.parse_args()
    load_before = os.getloadavg()
    result = measure(args.messages, args.rounds, args.warmup)
    load_after = os.getloadavg()
    load = tuple(max(a, b) for a, b in zip(load_before, load_after, strict=True))
    print(result["seen"], file=sys.stderr)
    text = section(result, args.messages, args.rounds, load)  # type: ignore[arg-type]
    _results.emit(args.out, MARKERS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
