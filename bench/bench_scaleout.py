"""Scale-out benchmark: delivery throughput with 1, 2 and 3 worker processes
(``gateway work --workers N``) on PostgreSQL and on SQLite, to the partner server.

Each run queues N small records (tests/delivery/test_scaleout.py's: two updates by id,
100 patients, order kept per patient) into a fresh store, starts ``gateway work``, and
times the outbox from its first ``sending`` event to its last ``delivered`` one (the
processes' start-up is not counted). The runs alternate backend and worker count
(1, 2, 3, then again) so that the machine's load falls on all of them alike; each
figure is the median of ``--repeat`` rounds, and each round's ratio to one worker is
taken within the round (paired), with the load average at the end of each run.

PostgreSQL: ``--pg URL`` or GATEWAY_TEST_DATABASE_URL (each run in a schema of its own,
dropped afterwards); without either only SQLite is measured.

    .venv/bin/python bench/bench_scaleout.py [--records N] [--repeat R] [--pg URL]
        [--out bench/RESULTS.md | -]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import _results  # bench/_results.py (this script's folder is on sys.path)
import httpx
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test's records and worker start-up, shared

from bench_delivery import PARTNER_DIR, _partner_env, _port  # noqa: E402

from gateway.store import Store, metadata  # noqa: E402
from tests.delivery.test_scaleout import enqueue, start_workers  # noqa: E402

RESULTS = REPO / "bench" / "RESULTS.md"
MARKERS = _results.markers("scale-out", "bench/bench_scaleout.py")
WORKERS = (1, 2, 3)


def _schema(pg: str) -> tuple[str, str]:
    """A fresh schema on ``pg``: (its URL, its name)."""
    name = f"b_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(pg)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    admin.dispose()
    url = sa.make_url(pg).update_query_dict({"options": f"-csearch_path={name}"})
    return url.render_as_string(hide_password=False), name


def _drop(pg: str, name: str) -> None:
    admin = sa.create_engine(pg)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {name} CASCADE")
    admin.dispose()


def one_run(backend: str, workers: int, records: int, base: str, pg: str | None) -> float:
    """Records/s of one run: ``records`` queued, delivered by ``workers`` processes."""
    httpx.post(f"{base}/$reset", timeout=60).raise_for_status()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        schema = None
        if backend == "postgresql" and pg:
            url, schema = _schema(pg)
        else:
            url = f"sqlite:///{home / 'gateway.db'}"
        try:
            store = Store.open(url)
            enqueue(store, base, records)
            supervisor = start_workers(home, url, base, workers)
            try:
                _wait(store, records, supervisor)
            finally:
                supervisor.send_signal(signal.SIGTERM)
                supervisor.wait(120)
            rate = records / _span(store)
            store.close()
        finally:
            if schema and pg:
                _drop(pg, schema)
    return rate


def _wait(store: Store, records: int, supervisor: subprocess.Popen[bytes]) -> None:
    o = metadata.tables["outbox"]
    query = sa.select(sa.func.count()).where(o.c.state == "delivered")
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline and supervisor.poll() is None:
        with store.engine.connect() as conn:
            if conn.execute(query).scalar_one() == records:
                return
        time.sleep(0.2)
    raise SystemExit("not delivered in time (or the workers stopped)")


def _span(store: Store) -> float:
    """Seconds from the first send to the last delivery."""
    e = metadata.tables["outbox_events"]
    query = sa.select(
        sa.func.min(sa.case((e.c.to_state == "sending", e.c.at))),
        sa.func.max(sa.case((e.c.to_state == "delivered", e.c.at))),
    )
    with store.engine.connect() as conn:
        first, last = conn.execute(query).one()
    return float((last - first).total_seconds())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=600, help="records per run")
    parser.add_argument("--repeat", type=int, default=2, help="runs per backend and count")
    parser.add_argument("--pg", default=os.environ.get("GATEWAY_TEST_DATABASE_URL", ""))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    if not (PARTNER_DIR / "start").is_file():
        raise SystemExit(f"the partner server is needed: {PARTNER_DIR}")
    backends = ["postgresql", "sqlite"] if args.pg else ["sqlite"]
    port = _port()
    env = _partner_env(port)
    subprocess.run([str(PARTNER_DIR / "start")], env=env, check=True, capture_output=True)
    base = f"http://127.0.0.1:{port}/fhir/R4"
    rates: dict[tuple[str, int], list[float]] = {}
    loads: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.repeat):
            for workers in WORKERS:
                for backend in backends:
                    rate = one_run(backend, workers, args.records, base, args.pg or None)
                    rates.setdefault((backend, workers), []).append(rate)
                    loads.setdefault((backend, workers), []).append(os.getloadavg()[0])
                    print(f"{backend} x{workers}: {rate:.1f} records/s", file=sys.stderr)
    finally:
        subprocess.run([str(PARTNER_DIR / "stop")], env=env, capture_output=True, check=False)
    _write(args, backends, rates, loads)
    return 0


def _write(
    args: argparse.Namespace,
    backends: list[str],
    rates: dict[tuple[str, int], list[float]],
    loads: dict[tuple[str, int], list[float]],
) -> None:
    cpu = _results.cpu_model()
    lines = [
        "## Scale-out benchmark (bench/bench_scaleout.py)",
        "",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, **shared with other work while "
        "measured** (the load average of each run is shown: figures are under load, compare "
        "them within this table only); Python " + platform.python_version(),
        f"- {args.records} records per run (two updates by id each, 100 patients, order kept "
        "per patient) queued, then delivered by `gateway work --workers N` to "
        "../shared/partner-fhir on loopback (validation on; it handles one request at a "
        "time); timed from the first send to the last delivery; "
        f"{args.repeat} rounds, each running every case once, interleaved",
        "",
        "| store | workers | records/s, median (each round) | vs 1 worker, same round | "
        "load average (1 min) per round |",
        "|---|---:|---:|---:|---:|",
    ]
    for backend in backends:
        ones = rates[(backend, 1)]
        for workers in WORKERS:
            runs = rates[(backend, workers)]
            # Paired: each run against the 1-worker run of the same round (same load).
            ratio = statistics.median(r / one for r, one in zip(runs, ones, strict=True))
            each = ", ".join(f"{r:.0f}" for r in runs)
            lines.append(
                f"| {'PostgreSQL' if backend == 'postgresql' else 'SQLite'} | {workers} | "
                f"{statistics.median(runs):.1f} ({each}) | {ratio:.2f}× | "
                f"{', '.join(f'{x:.1f}' for x in loads[(backend, workers)])} |"
            )
    lines += [
        "",
        "What limits it: each worker sends one request at a time and waits for its answer "
        "and for the store's commits around it (claim, `sending`, `delivered` with its "
        "event and audit record); several workers overlap those waits. The partner "
        "processes one request at a time, and every process shares the same 2 cores, so "
        "the gain flattens when the cores (not the waits) are what is short. On SQLite the "
        "writers also take turns on the one database lock. On this shared machine the same "
        "case differs by up to 2× from round to round as other work comes and goes: read "
        "the paired ratios, and more rounds (`--repeat`) before sizing anything on them.",
    ]
    _results.emit(args.out, MARKERS, "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
