"""API benchmark: ``gateway serve --workers 2`` receiving validated inbound requests,
beside a bare FastAPI endpoint that does no work, served the same way, in the same run.

Rows (each a closed loop of ``--connections`` keep-alive connections for ``--seconds``,
then an open loop paced at ``--paced`` requests/s, or half the closed loop's rate when
that is lower, for the latency a client sees below saturation):

- **bare**: ``POST /echo`` of a FastAPI app that reads the body and answers ``{}``,
  served by uvicorn with 2 worker processes on one socket and the h11 protocol, as
  ``gateway serve --workers 2`` serves the gateway's app: the ceiling of this machine,
  this Python, this server stack and this load generator;
- **inbound**: ``POST /fhir`` of a partner (NSCH → HKPMC): the golden referral Bundle,
  signed by NSCH (JWS, the demo PKI), a Bundle identifier of its own per request, the
  partner's bearer token; the gateway authenticates, checks the Bundle is in the
  sender's name, verifies the signature against the trust store, applies the inbound
  policy and the entries to its resource store (SQLite) and answers the
  transaction-response (gateway/inbound);
- **validate**: ``POST /$validate`` of the same Bundle (unsigned) with a local API token:
  the full R4 + profile validation, OperationOutcome back.

The load generator is this process: asyncio streams writing HTTP/1.1 requests and
reading answers by Content-Length (no client library in the hot loop: it shares the 2
cores with the servers). Then ``--profile`` requests of each gateway row run in this
process under cProfile through the ASGI app (no server), and the time is summed by
where it goes (package) — the "where the limit is" of RESULTS.md.

    .venv/bin/python bench/bench_api.py [--seconds 10] [--connections 16] [--paced 1000]
        [--profile 300] [--out bench/RESULTS.md | -]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import _results  # bench/_results.py (this script's folder is on sys.path)
import anyio.to_thread
import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "RESULTS.md"
MARKERS = _results.markers("api", "bench/bench_api.py")
GOLDEN = REPO / "tests" / "golden" / "hl7v2" / "ref_i12_utf8.expected.json"
NSCH_TOKEN = "nsch-partner-token-bench-0123456789abcdef"
LOCAL_TOKEN = "local-api-token-bench-0123456789"
WORKERS = 2
WARM_UP = 5.0  # seconds of load before measuring: each worker compiles the profiles it meets


# -- the bare app (served by uvicorn's own multi-process mode: `--serve-bare PORT`) -----
def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        await request.body()
        return Response(b"{}", media_type="application/json")

    return app


def serve_bare(port: int) -> None:
    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    uvicorn.run(
        "bench_api:bare_app",
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=WORKERS,
        http="h11",
        log_level="warning",
    )


# -- the receiving gateway (HKPMC) -------------------------------------------------------
def make_home(root: Path) -> Path:
    """A GATEWAY_HOME for HKPMC trusting the demo CA, with NSCH's partner token and a
    local API token; returns the PKI folder."""
    from gateway.datafiles import data_dir
    from gateway.signing import make_demo_pki

    pki = root / "pki"
    make_demo_pki(data_dir("seeds") / "network.yaml", pki)
    home = root / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "partner-tokens").write_text(f"nsch {NSCH_TOKEN}\n")
    (home / "secrets" / "partner-tokens").chmod(0o600)
    (home / "secrets" / "api-tokens").write_text(LOCAL_TOKEN + "\n")
    (home / "secrets" / "api-tokens").chmod(0o600)  # a readable token file is refused
    (home / "gateway.toml").write_text(
        f'institution = "hkpmc"\nsigning_trust = "{pki / "ca"}"\nsigning_keys = "{pki}"\n'
        'audit_enabled = true\nlog_level = "warning"\n'
    )
    return pki


def signed_bundles(pki: Path, count: int) -> list[bytes]:
    """``count`` signed referrals, each with a Bundle identifier of its own (so each is
    applied, not answered from the idempotency record)."""
    from gateway.signing import Signer, sign_bundle

    signer = Signer.load(pki / "nsch" / "key.pem", pki / "nsch" / "cert.pem")
    base = orjson.loads(GOLDEN.read_bytes())
    out = []
    for _ in range(count):
        bundle = copy.deepcopy(base)
        bundle["identifier"]["value"] = f"urn:uuid:{uuid.uuid4()}"
        out.append(orjson.dumps(sign_bundle(bundle, signer, "author")))
    return out


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running(command: list[str], env: dict[str, str], ready: str, log: Path) -> Iterator[int]:
    """Start a server (``command`` gets ``--port``), wait until ``ready`` answers."""
    port = _port()
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, str(port)], env=env, stdout=out, stderr=out)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"{command} exited: see {log}")
                try:
                    if httpx.get(f"http://127.0.0.1:{port}{ready}", timeout=5).status_code < 500:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{command} not ready in 300 s: see {log}")
                time.sleep(0.5)
            yield port
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the load generator --------------------------------------------------------------------
class Target:
    def __init__(self, port: int, path: str, headers: dict[str, str], bodies: list[bytes]):
        self.port, self.path, self.bodies = port, path, bodies
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.next = 0

    def request(self) -> bytes:
        body = self.bodies[self.next % len(self.bodies)]
        self.next += 1
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: bench\r\n{self.head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def closed_loop(target: Target, connections: int, seconds: float) -> dict[str, Any]:
    """``connections`` clients, each sending its next request when the answer arrives."""
    latencies: list[float] = []
    statuses: dict[int, int] = defaultdict(int)
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while loop.time() < end:
                started = loop.time()
                statuses[await _exchange(reader, writer, target.request())] += 1
                latencies.append(loop.time() - started)
        finally:
            writer.close()

    began = loop.time()
    await asyncio.gather(*(client() for _ in range(connections)))
    return _summary(latencies, statuses, loop.time() - began)


async def open_loop(target: Target, rate: float, seconds: float) -> dict[str, Any]:
    """Requests sent at ``rate`` per second whatever the answers do (each on a free
    connection of a pool, a new one when all are busy): latency below saturation."""
    latencies: list[float] = []
    statuses: dict[int, int] = defaultdict(int)
    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    tasks = []

    async def one(due: float) -> None:
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", target.port)
        statuses[await _exchange(*conn, target.request())] += 1
        latencies.append(loop.time() - due)  # from when it was due: queueing included
        idle.append(conn)

    began = loop.time()
    count = int(rate * seconds)
    for n in range(count):
        due = began + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    elapsed = loop.time() - began
    for _, writer in idle:
        writer.close()
    return _summary(latencies, statuses, elapsed)


def _summary(latencies: list[float], statuses: dict[int, int], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    return {
        "requests": len(latencies),
        "rate": len(latencies) / elapsed if elapsed else 0.0,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "mean": statistics.fmean(ordered) * 1000 if ordered else 0.0,
        "statuses": dict(statuses),
    }


def measure(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(closed_loop(target, args.connections, WARM_UP))  # compiled profiles, caches, pools
    closed = asyncio.run(closed_loop(target, args.connections, args.seconds))
    rate = min(float(args.paced), max(closed["rate"] * 0.5, 1.0))
    paced = asyncio.run(open_loop(target, rate, args.seconds))
    paced["target"] = rate
    return {"closed": closed, "paced": paced}


# -- where the time goes ------------------------------------------------------------------
_WHERE = (
    ("gateway/validation", "validation (R4 models, profiles, FHIRPath)"),
    ("fhirpathpy", "validation (R4 models, profiles, FHIRPath)"),
    ("fhir/resources", "validation (R4 models, profiles, FHIRPath)"),
    ("pydantic", "validation (R4 models, profiles, FHIRPath)"),
    ("gateway/signing", "signature check (JWS, JCS, certificate chain)"),
    ("joserfc", "signature check (JWS, JCS, certificate chain)"),
    ("cryptography", "signature check (JWS, JCS, certificate chain)"),
    ("rfc8785", "signature check (JWS, JCS, certificate chain)"),
    ("gateway/policy", "inbound policy"),
    ("sqlalchemy", "store (SQLAlchemy, SQLite: writes, commits)"),
    ("sqlite", "store (SQLAlchemy, SQLite: writes, commits)"),
    ("gateway/store", "store (SQLAlchemy, SQLite: writes, commits)"),
    ("gateway/inbound", "inbound: apply entries, search index, answer"),
    ("gateway/audit", "audit trail (AuditEvents, Merkle log)"),
    ("orjson", "JSON parse/serialise"),
    ("starlette", "HTTP framework (FastAPI, Starlette, httpx ASGI)"),
    ("fastapi", "HTTP framework (FastAPI, Starlette, httpx ASGI)"),
    ("anyio", "HTTP framework (FastAPI, Starlette, httpx ASGI)"),
    ("httpx", "HTTP framework (FastAPI, Starlette, httpx ASGI)"),
    ("asyncio", "event loop and threads"),
    ("threading", "event loop and threads"),
    ("concurrent", "event loop and threads"),
)


def _bucket(filename: str) -> str:
    for needle, name in _WHERE:
        if needle in filename:
            return name
    return "other (Python, the gateway's own glue)"


def profile(
    path: str, headers: dict[str, str], bodies: list[bytes], home: Path, dump: Path | None = None
) -> dict[str, Any]:
    """Run ``bodies`` through the app in-process under cProfile; own (tottime) seconds
    per bucket, and the per-request total."""
    from gateway import Settings
    from gateway.api import create_app

    app = create_app(Settings.load(home=home, env={}))

    async def inline(func: Any, *args: Any, **_: Any) -> Any:
        return func(*args)  # the thread pool's work in the profiled thread

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]

    async def run(batch: list[bytes]) -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            for body in batch:
                answer = await http.post(path, content=body, headers=headers)
                assert answer.status_code == 200, answer.text[:300]

    warm = max(len(bodies) // 10, 5)
    asyncio.run(run(bodies[:warm]))
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run(bodies[warm:]))
    profiler.disable()
    if dump is not None:  # for `python -m pstats` or snakeviz
        profiler.dump_stats(dump)
    stats = pstats.Stats(profiler)
    spent: dict[str, float] = defaultdict(float)
    for (filename, _, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        spent[_bucket(f"{filename}:{function}")] += tottime
    total = sum(spent.values())
    return {"per_request_ms": total / len(bodies[warm:]) * 1000, "share": dict(spent)}


# -- the run -------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase (default 10)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--paced", type=float, default=1000.0, help="open-loop rate cap")
    parser.add_argument("--profile", type=int, default=300, help="requests per row profiled")
    parser.add_argument(
        "--bundles", type=int, default=4000, help="distinct signed referrals (more: reused)"
    )
    parser.add_argument("--out", default=str(RESULTS), help="RESULTS.md to update, or -")
    parser.add_argument("--serve-bare", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return
    root = Path(tempfile.mkdtemp(prefix="bench-api-"))
    pki = make_home(root)
    home = root / "home"
    print(f"signing {args.bundles} referrals ...", file=sys.stderr)
    inbound = signed_bundles(pki, args.bundles)
    unsigned = [GOLDEN.read_bytes()]
    env = {**os.environ, "GATEWAY_HOME": str(home)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    fhir_json = {"Content-Type": "application/fhir+json"}
    results: dict[str, dict[str, Any]] = {}
    bare_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-bare"]
    with running(bare_cmd, env, "/docs", root / "bare.log") as port:
        print("bare ...", file=sys.stderr)
        results["bare"] = measure(Target(port, "/echo", fhir_json, unsigned), args)
    gateway_cmd = [sys.executable, "-m", "gateway", "serve", "--workers", str(WORKERS), "--port"]
    with running(gateway_cmd, env, "/health/ready", root / "gateway.log") as port:
        print("inbound ...", file=sys.stderr)
        auth = {**fhir_json, "Authorization": f"Bearer {NSCH_TOKEN}"}
        results["inbound"] = measure(Target(port, "/fhir", auth, inbound), args)
        print("validate ...", file=sys.stderr)
        local = {**fhir_json, "Authorization": f"Bearer {LOCAL_TOKEN}"}
        results["validate"] = measure(Target(port, "/$validate", local, unsigned), args)
    print("profiles ...", file=sys.stderr)
    fresh = signed_bundles(pki, args.profile)
    auth = {**fhir_json, "Authorization": f"Bearer {NSCH_TOKEN}"}
    local = {**fhir_json, "Authorization": f"Bearer {LOCAL_TOKEN}"}
    profiles = {
        "inbound": profile("/fhir", auth, fresh, home),
        "validate": profile("/$validate", local, unsigned * args.profile, home),
    }
    text = section(results, profiles, args)
    _results.emit(args.out, MARKERS, text)


ROWS = {
    "bare": "bare FastAPI `POST /echo` (no work)",
    "inbound": "`POST /fhir` signed referral Bundle (partner token)",
    "validate": "`POST /$validate` referral Bundle (API token)",
}


def section(
    results: dict[str, dict[str, Any]], profiles: dict[str, dict[str, Any]], args: Any
) -> str:
    cpu = _results.cpu_model()
    bare = results["bare"]["closed"]["rate"]
    lines = [
        "## API benchmark (bench/bench_api.py)",
        "",
        f"- CPU: {cpu}, {os.cpu_count()} logical cores, **shared and loaded** (load average "
        f"{os.getloadavg()[0]:.1f} when the run ended: other processes were running); "
        f"Python {platform.python_version()}; SQLite store. The load generator runs on "
        "the same 2 cores as the servers.",
        f"- Servers: `gateway serve --workers {WORKERS}` and, for the bare row, uvicorn with "
        f"{WORKERS} worker processes (h11), both on one shared socket; closed loop: "
        f"{args.connections} keep-alive connections for {args.seconds:g} s after a {WARM_UP:g} s "
        f"warm-up; paced: an open loop at the rate shown (capped at {args.paced:g}/s, at "
        "most half the closed loop's rate), latency counted from when each request was due.",
        "",
        "| row | closed loop req/s | × bare | p50 ms | p99 ms | paced req/s | p50 ms | p99 ms "
        "| statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key, label in ROWS.items():
        closed, paced = results[key]["closed"], results[key]["paced"]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted({**closed["statuses"]}.items()))
        lines.append(
            f"| {label} | {closed['rate']:,.0f} | {closed['rate'] / bare:.3f} | "
            f"{closed['p50']:.1f} | {closed['p99']:.1f} | {paced['target']:,.0f} | "
            f"{paced['p50']:.1f} | {paced['p99']:.1f} | {statuses} |"
        )
    lines += [
        "",
        "Where one request's time goes (cProfile, one request at a time in-process "
        f"through the ASGI app, the thread pool's work run inline, {args.profile} requests "
        "per row after a warm-up; own time by package, waits for the disk included; the "
        "profiler roughly doubles the time of Python code):",
        "",
    ]
    for key, found in profiles.items():
        share = found["share"]
        total = sum(share.values())
        parts = ", ".join(
            f"{name} {spent / total:.0%}"
            for name, spent in sorted(share.items(), key=lambda kv: -kv[1])
            if spent / total >= 0.02
        )
        lines.append(
            f"- **{key}**: {found['per_request_ms']:.1f} ms per request under the "
            f"profiler — {parts}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
