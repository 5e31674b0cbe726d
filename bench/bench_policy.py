"""The policy stage's cost in the pipeline (pyperf; self-contained).

    .venv/bin/python -m pip install -e '.[dev,bench]'      # pyperf
    .venv/bin/python bench/bench_policy.py --out bench/RESULTS.md

Rows over the same cross-border referrals, in the same run (pyperf interleaves them
over worker processes):

- ``pipeline``: ``Converter.convert(bytes)`` of never-seen variants (a running number
  in the control id and the MRN each pass: the Patient and the Bundle are built anew);
- ``pipeline + policy``: the same, then the policy stage on each record as the outbound
  path runs it — ``Policy.decide(record.mapped, ..., text=record.bundle_json)`` on the
  costliest path (a consent on file, every rule, minimisation of identifiers, addresses
  and phones with every string searched, labels and Provenance) and the bytes that
  leave (``Decision.bundle_json``);
- ``policy alone``: ``Policy.decide`` of the converted records (kept from one
  conversion), for where its time goes.

The goal (issue 12): the policy stage under 10 % of the pipeline's throughput: 1 −
pipeline / (pipeline + policy) per message. ``--out`` replaces this benchmark's
section of RESULTS.md (the other sections stay).
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pyperf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway import Converter, Settings  # noqa: E402
from gateway.policy import (  # noqa: E402
    PURPOSE_SYSTEM,
    MemoryConsents,
    MemoryCounters,
    Policy,
    parse_consent,
)

SECTION = "## Policy stage benchmark (bench/bench_policy.py)"
NOW = datetime(2026, 6, 18, 8, 0)
KEY = bytes(range(32))
# (example message, sender, recipient): both directions across the boundary.
CASES = [
    ("ref_i12_nsch_to_hkpmc.hl7", "NSCH", "HKPMC"),
    ("ref_i12_hkpmc_to_nsch.hl7", "HKPMC", "NSCH"),
]
VARIANTS = 20  # per example: a different control id and MRN each


def _variants() -> list[tuple[bytes, str, str]]:
    """``VARIANTS`` per example, each with its own control id and MRN."""
    out = []
    for name, sender, recipient in CASES:
        raw = (ROOT / "examples" / "hl7v2" / name).read_bytes()
        for n in range(VARIANTS):
            fresh = re.sub(
                rb"(\|REF\^I12\^REF_I12\|)([A-Z0-9]+)", rb"\g<1>\g<2>" + b"%03d" % n, raw
            )
            fresh = fresh.replace(b"0098765^^^NSCH^MR", b"0098%03d^^^NSCH^MR" % n)
            out.append((fresh, sender, recipient))
    return out


def _consents(policy: Policy) -> MemoryConsents:
    records = []
    for n, recipient in enumerate(("1.3.6.1.4.1.99999.1.1", "2.16.156.10011.99.1.1")):
        consent: dict[str, Any] = {
            "resourceType": "Consent",
            "id": f"bench-{n}",
            "status": "active",
            "scope": {"coding": [{"code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {
                "identifier": {
                    "system": "https://fhir-gateway.example.org/sid/hkid",
                    "value": "K583726A",
                }
            },
            "provision": {
                "period": {"start": "2026-01-01", "end": "2026-12-31"},
                "actor": [
                    {
                        "role": {"coding": [{"code": "IRCP"}]},
                        "reference": {"identifier": {"value": f"urn:oid:{recipient}"}},
                    }
                ],
                "purpose": [{"system": PURPOSE_SYSTEM, "code": "referral"}],
            },
        }
        records.append(parse_consent(consent, policy.network, policy.data.purposes))
    return MemoryConsents(records)


def _setup() -> tuple[Converter, Policy, list[tuple[bytes, str, str]], list[Any], MemoryConsents]:
    home = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    settings = Settings.load(home=home, env={})
    converter = Converter(settings)
    policy = Policy(settings, key=KEY)
    messages = _variants()
    records = []
    for raw, sender, recipient in messages:
        record = converter.convert(raw)[0]
        assert record.ok and record.mapped is not None, record.issues
        records.append((record, sender, recipient))
    consents = _consents(policy)
    for record, sender, recipient in records[::VARIANTS]:
        decision = _decide(policy, record, sender, recipient, consents)
        assert decision.outcome == "allow-with-changes", [r.reason["en"] for r in decision.results]
    return converter, policy, messages, records, consents


def _decide(
    policy: Policy, record: Any, sender: str, recipient: str, consents: MemoryConsents
) -> Any:
    """The policy stage on one converted record: its Bundle as the converter built it
    (no second parse), its JSON for the prohibited-code search."""
    decision = policy.decide(
        record.mapped,
        sender,
        recipient,
        consents=consents,
        counters=MemoryCounters(),
        now=NOW,
        text=record.bundle_json,
    )
    decision.bundle_json  # noqa: B018  (what leaves, as the stage hands it on)
    return decision


_FRESH = 0


def _fresh(raw: bytes) -> bytes:
    return raw.replace(b"^^^NSCH^MR", b"%06d^^^NSCH^MR" % _FRESH, 1)


def bench_pipeline(
    loops: int, converter: Converter, messages: list[tuple[bytes, str, str]]
) -> float:
    """Never-seen variants: a running number in the MRN (PID-3), so the Patient and
    the Bundle are built anew (the converter's realistic case)."""
    global _FRESH
    start = time.perf_counter()
    for _ in range(loops):
        _FRESH += 1
        for raw, _sender, _recipient in messages:
            converter.convert(_fresh(raw))
    return time.perf_counter() - start


def bench_pipeline_policy(
    loops: int,
    converter: Converter,
    policy: Policy,
    messages: list[tuple[bytes, str, str]],
    consents: MemoryConsents,
) -> float:
    """The same conversions, each record then through the policy stage."""
    global _FRESH
    start = time.perf_counter()
    for _ in range(loops):
        _FRESH += 1
        for raw, sender, recipient in messages:
            for record in converter.convert(_fresh(raw)):
                _decide(policy, record, sender, recipient, consents)
    return time.perf_counter() - start


def bench_policy(loops: int, policy: Policy, records: list[Any], consents: MemoryConsents) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        for record, sender, recipient in records:
            _decide(policy, record, sender, recipient, consents)
    return time.perf_counter() - start


def bench_policy_cold(
    loops: int, policy: Policy, records: list[Any], consents: MemoryConsents
) -> float:
    """The stage with nothing kept from earlier decisions (pass 1 per patient and the
    pseudonyms forgotten before each): the cost of a patient never seen before."""
    start = time.perf_counter()
    for _ in range(loops):
        for record, sender, recipient in records:
            policy._passes.clear()
            policy._aliases.clear()
            _decide(policy, record, sender, recipient, consents)
    return time.perf_counter() - start


def paired(
    converter: Converter,
    policy: Policy,
    messages: list[tuple[bytes, str, str]],
    records: list[Any],
    consents: MemoryConsents,
    rounds: int = 41,
) -> tuple[float, float, float, float]:
    """(pipeline, pipeline + policy, policy alone, policy alone with nothing remembered),
    CPU µs per message, from rounds that run the four back to back over the same
    messages in a rotating order, timed in
    this process's CPU time (time.process_time: waiting for a core shared with other
    jobs does not count). Other load still only adds time (caches), so each row's cost
    is its fastest round; the share is of those. (pyperf's wall-clock rows run one after
    the other, minutes apart; the load on this VM changes more than the goal's 10 % in
    that time.)"""
    rows = (
        lambda: bench_pipeline(1, converter, messages),
        lambda: bench_pipeline_policy(1, converter, policy, messages, consents),
        lambda: bench_policy(1, policy, records, consents),
        lambda: bench_policy_cold(1, policy, records, consents),
    )
    best = [float("inf")] * len(rows)
    for n in range(rounds):
        for index in [(n + k) % len(rows) for k in range(len(rows))]:
            start = time.process_time()
            rows[index]()
            best[index] = min(best[index], time.process_time() - start)
    base, full, alone, cold = (b / len(messages) * 1e6 for b in best)
    return base, full, alone, cold


def _write(
    out: Path | None,
    pipeline: pyperf.Benchmark,
    with_policy: pyperf.Benchmark,
    alone: pyperf.Benchmark,
    n: int,
    pairs: tuple[float, float, float, float],
) -> str:
    base = pipeline.median() * 1e6  # inner_loops: pyperf's values are per message
    full = with_policy.median() * 1e6
    share = 1 - base / full
    paired_share = 1 - pairs[0] / pairs[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    rows = [
        f"{b.median() * 1e6:,.0f} | {b.stdev() * 1e6:,.0f}" for b in (pipeline, with_policy, alone)
    ]
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    reproduce = (
        ".venv/bin/python -m pip install -e '.[dev,bench]' && "
        ".venv/bin/python bench/bench_policy.py --out bench/RESULTS.md"
    )
    section = f"""{SECTION}

Recorded {datetime.now():%Y-%m-%d %H:%M} UTC by `bench/bench_policy.py` (pyperf
{pyperf.__version__}, {pipeline.get_nrun()} values per row over worker processes), Python
{platform.python_version()}, gateway commit {commit}, on the shared 2-core VM (other
jobs running, load average {load} at the end: expect ±50 % on each row; the rows share
the conditions). Reproduce: `{reproduce}`.

Workload: {n} cross-border referrals (REF^I12, {VARIANTS} variants each of the Nansha →
Hong Kong and Hong Kong → Nansha examples), never seen before on each pass (a running
number in the MRN; the patient's HKID, phones and address stay, so what the stage keeps
per patient is found). *pipeline* is `Converter.convert(bytes)`; *pipeline + policy* is the
same with each record then through the policy stage as the outbound path runs it —
`Policy.decide(record.mapped, …, text=record.bundle_json)` on the costliest path (consent
on file, every rule, minimisation of identifiers, addresses and phones with every string
searched, labels and Provenance) and the bytes that leave (`Decision.bundle_json`);
*policy alone* is the stage on records kept from one conversion.

| row | µs per message (median) | ± std dev |
| --- | ---: | ---: |
| pipeline (`Converter.convert`, never-seen variants) | {rows[0]} |
| pipeline + policy stage | {rows[1]} |
| policy stage alone (`Policy.decide` + `bundle_json`) | {rows[2]} |

Paired, in CPU time, from 41 rounds that run the rows back to back in a rotating order
(each row's fastest round: other load only ever adds time): pipeline {pairs[0]:,.0f} µs, pipeline +
policy {pairs[1]:,.0f} µs, policy alone {pairs[2]:,.0f} µs per message; policy alone with nothing
kept from earlier decisions (a patient never seen: pass 1 and the pseudonyms made anew)
{pairs[3]:,.0f} µs.

The policy stage costs **{paired_share:.1%}** of the pipeline's throughput, paired (1 −
pipeline / pipeline + policy; {share:.1%} from the pyperf medians above, rows minutes
apart): with it the pipeline converts {1 - paired_share:.1%} as many messages per second.
**The goal (under 10 %) is {"met" if paired_share < 0.10 else "not met"}.**

History on this VM (paired rounds, same workload): main at b9eb931 (the stage parsed
`bundle_json` again and serialised its own copy) 36.5 %, policy alone 281 µs; cf21334
(the converter's dict read, not parsed) 29.6 %, policy alone 178 µs. This run's code
(issue 12, speed work) keeps per Policy what depends on the patient alone — pass 1 of
the minimisation (the Patient's pseudonymised identifiers, addresses, phones and
contacts as changed, the changes, the compiled search for the original values; keyed
by exactly what pass 1 reads, so a new MRN or control id still finds it), the
pseudonyms, the volume rule's words — and searches the minimised Bundle's compact JSON
squeezed and upper-cased in one pass (digit needles are then found several times
faster: `bytes.find` filters on a character class that puts `p`–`y` with the digits),
the prohibited-code search reading the same squeezed bytes. Every golden and example
Bundle, on every decision path, still gives the decisions and the Bundle recorded
before this work (tests/policy/test_equivalence.py). The VM's load moves each row by
tens of per cent between runs: compare rows of one run, not runs.

Where the stage's time goes now (py-spy samples of *policy alone*, shares of the
stage): serialising what leaves (`dump_json`) 13 %, the compact JSON of the minimised
Bundle 8 %, squeezing it 10 %, the byte searches for original values 9 %, the labels and
Provenance 12 %, the prohibited-code search 5 % (10 % on the mainland → Hong Kong half),
pass 1 replayed 6 %, the entry scan 4 %, rule and decision bookkeeping the rest. What is
left is mostly two serialisations and one squeeze of ~24 KB per message, each about
10–20 µs of C on this VM, plus Python that is per resource rather than per message.
Splicing the bytes that leave from the converter's JSON was tried and measured slower
here: finding each resource's end in the indented JSON (`bytes.find` with needles made
of spaces and braces) cost ~70 µs a message, more than orjson serialising the whole
Bundle (~12 µs). Under 10 % would need the stage at about a tenth of the pipeline: one
serialisation fewer (e.g. the converter handing over its compact JSON, or a search
that needs no squeeze) and a third less Python.
"""
    if out is not None and out.exists():
        text = out.read_text(encoding="utf-8")
        start = text.find(SECTION)
        if start >= 0:
            # The section ends where the next one (or another script's marker) begins.
            ends = [text.find(m, start + len(SECTION)) for m in ("\n## ", "\n<!-- ")]
            end = min((e for e in ends if e >= 0), default=-1)
            text = text[:start] + section + (text[end:] if end >= 0 else "")
        else:
            text = text.rstrip("\n") + "\n\n" + section
        out.write_text(text, encoding="utf-8")
    return section


def main() -> None:
    runner = pyperf.Runner(
        processes=4,
        values=3,
        add_cmdline_args=lambda cmd, args: cmd.extend(["--out", args.out] if args.out else []),
    )
    runner.argparser.add_argument("--out", help="RESULTS.md to update")
    args = runner.parse_args()
    converter, policy, messages, records, consents = _setup()
    n = len(messages)
    pipeline = runner.bench_time_func(
        "pipeline", bench_pipeline, converter, messages, inner_loops=n
    )
    with_policy = runner.bench_time_func(
        "pipeline+policy",
        bench_pipeline_policy,
        converter,
        policy,
        messages,
        consents,
        inner_loops=n,
    )
    alone = runner.bench_time_func(
        "policy", bench_policy, policy, records, consents, inner_loops=len(records)
    )
    if pipeline is not None and with_policy is not None and alone is not None and not args.worker:
        out = Path(args.out) if args.out else None
        pairs = paired(converter, policy, messages, records, consents)
        print(_write(out, pipeline, with_policy, alone, n, pairs))


if __name__ == "__main__":
    main()
