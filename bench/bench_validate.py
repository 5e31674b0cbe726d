"""Validation benchmark: the gateway's validator (structure + profile) per profile, in
resources per second, beside the bare ``fhir.resources`` parse of the same JSON; and per
HL7 v2 message, the validation stage as the pipeline runs it by each of the validator's
paths side by side (reference, incremental, by construction: ``GATEWAY_VALIDATION_PATH``).

For every profile the pipeline applies (the gateway's profile for a resource type where
profiles/ has one, else the base R4 definition), the resources of that profile found in
the golden outputs and examples are validated with ``Validator.validate_resource`` as the
pipeline does (a warm validator: their skeletons are known, as in a feed), and parsed
with the R4B model's ``model_validate_json`` (the bare parse a validating reader does at
least). Every pyperf value works on never-seen variants (ids, identifier values, names,
dates changed), so that no content-keyed cache answers from an earlier pass.

Run from the repository root (the venv has the ``bench`` extras)::

    .venv/bin/python bench/bench_validate.py [--out bench/RESULTS.md | -] [pyperf options]

``--out FILE`` replaces the validation section of FILE (between its markers).

Per message: the HL7 v2 messages of ``bench_convert`` (examples, goldens, the shared
corpus), each value on never-seen variants (``bench_convert.freshen``), mapped untimed;
timed is ``Validator.check_bundle(bundle, True, TRANSACTION_PROFILE)`` on the Bundle the
mapping stage hands over, by a warm validator of each path. Then, in this process, paired
rounds: the same fresh Bundles validated alternately by each path (CPU clock), whose
median ratios hold under a drifting load better than rows run minutes apart.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _results  # bench/_results.py (this script's folder is on sys.path)
import bench_convert  # the HL7 v2 messages and their never-seen variants
import orjson
import pyperf  # type: ignore[import-untyped]
from fhir.resources.R4B import get_fhir_model_class

from gateway import Settings
from gateway.pipeline import Converter
from gateway.validation import TRANSACTION_PROFILE, Validator
from gateway.validation._check import ProfileValidator
from gateway.validation.corepkg import core_package_path

REPO = _results.REPO
MARKERS = _results.markers("validation", "bench/bench_validate.py")
_COUNTER = itertools.count(1)


def samples() -> dict[str, list[dict[str, Any]]]:
    """Profile URL → the resources of the goldens and examples it applies to."""
    chooser = ProfileValidator()
    out: dict[str, list[dict[str, Any]]] = {}
    files = sorted(REPO.glob("tests/golden/**/*.expected.json"))
    files += sorted(REPO.glob("examples/**/bundles/*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for bundle in data if isinstance(data, list) else [data]:
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                continue
            for entry in bundle.get("entry", []):
                resource = entry.get("resource")
                if not isinstance(resource, dict):
                    continue
                plan = chooser.plan_for(resource, None)
                if plan is None:
                    continue
                url = _url_of(resource)
                out.setdefault(url, []).append(resource)
    return dict(sorted(out.items()))


def _url_of(resource: dict[str, Any]) -> str:
    """The profile the resource names (the gateway's own), else its base definition."""
    named = (resource.get("meta") or {}).get("profile") or []
    found = next((str(u) for u in named if isinstance(u, str)), None)
    return found or f"http://hl7.org/fhir/StructureDefinition/{resource['resourceType']}"


def _freshen(node: Any, k: int) -> Any:
    """A never-seen variant: ids, identifier values, names, texts and dates changed."""
    if isinstance(node, list):
        return [_freshen(v, k) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("id", "value", "family", "text") and isinstance(value, str):
            out[key] = f"{value}{k}" if key != "id" else f"{value[:40]}-{k}"
        elif key in ("birthDate", "authoredOn", "issued", "started") and isinstance(value, str):
            out[key] = f"{1950 + k % 60}{value[4:]}"
        else:
            out[key] = _freshen(value, k)
    return out


def _validate_work(resources: list[dict[str, Any]]) -> Callable[[int], _results.Work]:
    validator = Validator()
    for resource in resources:  # warm: the skeletons are known, as in a running feed
        assert validator.validate_resource(copy.deepcopy(resource)) == [], "invalid sample"

    def prepare(loops: int) -> _results.Work:
        batch = [_freshen(r, next(_COUNTER)) for _ in range(loops) for r in resources]

        def run() -> None:
            for r in batch:
                validator.validate_resource(r)

        return run

    return prepare


def _parse_work(resources: list[dict[str, Any]]) -> Callable[[int], _results.Work]:
    models = [get_fhir_model_class(str(r["resourceType"])) for r in resources]

    def prepare(loops: int) -> _results.Work:
        batch = [
            (m, orjson.dumps(_freshen(r, next(_COUNTER))))
            for _ in range(loops)
            for m, r in zip(models, resources, strict=True)
        ]

        def run() -> None:
            for model, data in batch:
                model.model_validate_json(data)

        return run

    return prepare


# -- per message: the validation stage by each path ----------------------------------------

PATHS = ("reference", "incremental", "construct")
_PATH_LABELS = {
    "reference": "reference (full walk, no memo)",
    "incremental": "incremental (by skeleton)",
    "construct": "by construction (by shape)",
}


class Messages:
    """The HL7 v2 messages, and a converter that maps them (validation off: only mapped)."""

    _counter = itertools.count(1)

    def __init__(self, corpus: Path) -> None:
        home = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-validate-home"
        self.conv = Converter(Settings.load(home=home, env={"GATEWAY_VALIDATE": "false"}))
        found = bench_convert.collect_messages(self.conv, corpus)
        self.samples = [s for s in found.samples if s.common]

    def bundles(self, passes: int) -> list[Any]:
        """Mapped Bundles of never-seen variants: ``passes`` × every message."""
        out = []
        for _ in range(passes):
            k = next(self._counter)
            for s in self.samples:
                data = bench_convert.freshen(s.text, k).encode(s.codec)
                record = self.conv.convert(data)[0]
                assert record.mapped is not None, "a variant did not map"
                out.append(record.mapped)
        return out


def _message_work(messages: Callable[[], Messages], path: str) -> Callable[[int], _results.Work]:
    """Set up on first use: a pyperf worker runs one row and skips the others."""
    validators: list[Validator] = []

    def prepare(loops: int) -> _results.Work:
        if not validators:
            validators.append(Validator(path))
            for bundle in messages().bundles(2):  # warm: the feed's shapes known
                assert validators[0].check_bundle(bundle, True, TRANSACTION_PROFILE) == []
        validator = validators[0]
        batch = messages().bundles(loops)

        def run() -> None:
            for bundle in batch:
                validator.check_bundle(bundle, True, TRANSACTION_PROFILE)

        return run

    return prepare


def paired(messages: Messages, rounds: int = 5, passes: int = 4) -> dict[str, list[float]]:
    """µs per message of each path, per round, on the same fresh Bundles alternately."""
    validators = {path: Validator(path) for path in PATHS}
    for bundle in messages.bundles(2):
        for validator in validators.values():
            validator.check_bundle(bundle, True, TRANSACTION_PROFILE)
    out: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        batch = messages.bundles(passes)
        for path, validator in validators.items():
            t0 = time.process_time()
            for bundle in batch:
                validator.check_bundle(bundle, True, TRANSACTION_PROFILE)
            out[path].append((time.process_time() - t0) / len(batch) * 1e6)
    return out


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def _short(url: str) -> str:
    return url.rsplit("/", 1)[-1] + ("" if "hl7.org/fhir" not in url else " (base R4)")


def render(
    rows: list[tuple[str, int, pyperf.Benchmark, pyperf.Benchmark]],
    per_message: dict[str, pyperf.Benchmark],
    rounds: dict[str, list[float]],
    messages: int,
    args: Any,
) -> str:
    lines = [
        "## Validation benchmark: profile validation beside the bare fhir.resources parse",
        "",
        f"Recorded {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/bench_validate.py`; "
        "reproduce with `make bench-validate`. Gateway commit "
        f"{_results.commit()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
        "at the end (a shared 2-core VM: expect tens of per cent of drift).",
        "",
        "Per profile the pipeline applies, the golden and example resources of that profile "
        "(never-seen variants every value: ids, identifier values, names, dates changed) are "
        "validated by a warm `Validator.validate_resource` (structure with the R4B models + "
        "the profile: cardinality, fixed/pattern, slicing, required bindings, invariants, "
        "reference types; their skeletons known, as in a feed), and parsed by the R4B "
        "model's `model_validate_json` of the same JSON. Ratio = validation rate ÷ parse "
        "rate, same run.",
        "",
        _results.method(args, "resources"),
        "",
        "| profile | resources | validate: resources/s | parse: resources/s | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for url, n, valid, parse in rows:
        v, p = 1 / float(valid.median()), 1 / float(parse.median())
        lines.append(
            f"| `{_short(url)}` | {n} | **{_results.rate(v)}** | {_results.rate(p)} | "
            f"**{v / p:.2f}** |"
        )
    lines += _per_message(per_message, rounds, messages)
    return "\n".join(lines)


def _per_message(
    rows: dict[str, pyperf.Benchmark], rounds: dict[str, list[float]], messages: int
) -> list[str]:
    if not rows and not rounds:
        return []
    lines = [
        "",
        "### Per HL7 v2 message: the validation stage by each path, same run",
        "",
        f"{messages} HL7 v2 messages (`bench_convert`'s: examples, goldens, the shared corpus), "
        "never-seen variants every value (`bench_convert.freshen`), mapped untimed; timed is "
        "`Validator.check_bundle(bundle, True, TRANSACTION_PROFILE)` on the Bundle the mapping "
        "stage hands over, by a warm validator of each path (`GATEWAY_VALIDATION_PATH`): "
        "*reference* walks every resource in full with no memo (the verdict the others must "
        "give, `tests/validation/test_construct.py`), *incremental* by skeleton, *by "
        "construction* from each resource's shape (docs/validation.md). The machine was "
        "loaded (other work on both cores): compare within a run.",
        "",
    ]
    if rows:
        ref = rows.get("reference")
        lines += [
            "| path | µs/message (pyperf median) | messages/s | ± std. dev. | ÷ reference time |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for path, bench in rows.items():
            median = float(bench.median()) / messages  # a value: one pass over every message
            spread = (
                float(bench.stdev()) / float(bench.mean()) if len(bench.get_values()) > 1 else 0
            )
            share = f"{float(bench.median()) / float(ref.median()):.3f}" if ref else "–"
            lines.append(
                f"| {_PATH_LABELS[path]} | **{median * 1e6:,.0f}** | {_results.rate(1 / median)} "
                f"| {spread:.0%} | {share} |"
            )
    if rounds:
        n = len(next(iter(rounds.values())))
        lines += [
            "",
            f"Paired in one process ({n} rounds; in each, the same fresh Bundles validated by "
            "each path in turn; CPU clock; median of the rounds):",
            "",
            "| path | µs/message, each round | median | ÷ reference | ÷ incremental |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        ref_m, inc_m = _median(rounds["reference"]), _median(rounds["incremental"])
        for path, values in rounds.items():
            m = _median(values)
            each = ", ".join(f"{v:,.0f}" for v in values)
            lines.append(
                f"| {_PATH_LABELS[path]} | {each} | **{m:,.0f}** | {m / ref_m:.3f} | "
                f"{m / inc_m:.2f} |"
            )
    return lines


def main() -> int:
    def forward(args: argparse.Namespace) -> list[str]:
        out = ["--clock", args.clock, "--corpus", str(args.corpus)]
        return out + (["--messages-only"] if args.messages_only else [])

    runner = _results.runner(3, 3, forward)
    _results.add_clock_option(runner.argparser)
    runner.argparser.add_argument("--out", default="-", help="RESULTS.md to update, or -")
    runner.argparser.add_argument(
        "--corpus",
        type=Path,
        default=REPO.parent / "shared" / "corpus" / "hl7v2",
        help="the shared corpus' HL7 v2 folder (default ../shared/corpus/hl7v2)",
    )
    runner.argparser.add_argument(
        "--messages-only", action="store_true", help="only the per-message rows"
    )
    args = runner.parse_args()
    if core_package_path() is None:
        print("hl7.fhir.r4.core is not installed (make test installs it)", file=sys.stderr)
        return 1
    rows = []
    for url, resources in [] if args.messages_only else samples().items():
        name = _short(url).split(" ")[0]
        valid = runner.bench_time_func(
            f"validate {name}",
            _results.time_func(args.clock, _validate_work(resources)),
            inner_loops=len(resources),
        )
        parse = runner.bench_time_func(
            f"parse {name}",
            _results.time_func(args.clock, _parse_work(resources)),
            inner_loops=len(resources),
        )
        if valid is not None and parse is not None:
            rows.append((url, len(resources), valid, parse))
    found: list[Messages] = []

    def messages() -> Messages:
        if not found:
            found.append(Messages(args.corpus))
        return found[0]

    per_message = {}
    for path in PATHS:
        # a value is the time of one pass over every message (render divides)
        bench = runner.bench_time_func(
            f"message {path}", _results.time_func(args.clock, _message_work(messages, path))
        )
        if bench is not None:
            per_message[path] = bench
    if args.worker or not (rows or per_message):
        return 0
    rounds = paired(messages())
    text = render(rows, per_message, rounds, len(messages().samples), args)
    if args.out != "-":
        _results.write_section(Path(args.out), MARKERS, text)
    print(_results.section_block(MARKERS, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
