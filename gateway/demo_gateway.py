"""``gateway demo``, section 4: the gateway path, a referral crossing from Nansha to Hong
Kong on loopback, with two gateways in this process.

- **A**, Nansha Central Hospital (``nsch``, mainland), and **B**, the Hong Kong partner
  (``hkpmc``), each a home of its own under ``$GATEWAY_HOME/out/demo/gateway/`` (made
  fresh each run): SQLite, keys of one demo PKI (``gateway keys init``), each the
  other's partner with a bearer token the receiver made (``gateway inbound token``,
  ``gateway partners set``);
- both APIs served by uvicorn on 127.0.0.1 (free ports) in threads of this process,
  stopped at the end; delivery runs here, as ``gateway send --wait`` runs it;
- A sends ``examples/hl7v2/ref_i12_nsch_to_hkpmc.hl7``: stored, converted, routed,
  decided by the cross-border policy (on the patient's consent, imported first, and
  the GBA agreement), signed, delivered; B verifies the signature and keeps the
  referral, accepts it, and A shows the referral accepted; both audit logs verified.

Each step is one line; a step that fails is one ``error`` line and the section ends
(non-zero exit). Every wait has a deadline; the servers are stopped and the stores
closed at the end, whatever happened. (What the API opens for itself — stores it opens
on first use — stays open, idle, until the process ends: gateway/api closes only its
own at shutdown.)"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import orjson
import sqlalchemy as sa

from .audit import AuditLog, default_checker, store_hook, verify_live
from .config import Settings, private_folder
from .datafiles import data_dir
from .delivery import DeliveryConfig, Outbound, OutboundResult, deliver_rows
from .errors import GatewayError
from .inbound import Referrals, bundles
from .partners import set_partner
from .pipeline import Converter
from .policy import PURPOSE_SYSTEM
from .processing import process_message
from .signing import make_demo_pki, trust_store, verify_bytes
from .store import Incoming, Store, open_store

__all__ = ["REFERRAL_FILE", "GatewayPath", "run_gateway_path"]

REFERRAL_FILE = "ref_i12_nsch_to_hkpmc.hl7"  # the referral the demo network sends across
A, B = "nsch", "hkpmc"
# The patient's identifier the consent names: the HKID of the referral's PID-3 (the
# consent is matched by identifier; it is never printed).
HKID = ("https://fhir-gateway.example.org/sid/hkid", "K583726A")
WAIT = 20.0  # seconds any one wait may take (a loaded 2-core CI machine: ~1 s each)
# Delivery as fast as loopback allows, and bounded: a request never waits past these.
SETTINGS = (
    "delivery_poll_seconds = 0.05\n"
    "delivery_backoff_base = 0.2\n"
    "delivery_backoff_cap = 1.0\n"
    "delivery_connect_timeout = 5.0\n"
    "delivery_read_timeout = 15.0\n"
    "delivery_request_deadline = 15.0\n"
)

T = TypeVar("T")


class StepFailed(Exception):
    """A step of the path did not do what it should: its one line says why."""


@dataclass
class Gateway:
    """One of the two gateways: its home, settings, store and API server."""

    key: str
    home: Path
    sock: socket.socket
    settings: Settings | None = None
    store: Store | None = None
    server: Any = None
    thread: threading.Thread | None = None
    port: int = field(init=False)

    def __post_init__(self) -> None:
        self.port = int(self.sock.getsockname()[1])  # kept: the socket closes at the end

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def open(self) -> Store:
        assert self.settings is not None
        if self.store is None:
            self.store = open_store(self.settings)
        return self.store


@dataclass
class GatewayPath:
    """What section 4 made: where things are, for the closing lines and the tests."""

    root: Path
    a: Gateway
    b: Gateway
    signed: Path  # the signed Bundle as A delivered it
    lines: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        """The two gateways' log lines (what `gateway serve` would print)."""
        return self.root / "gateways.log"

    def closing(self) -> str:
        """Where everything is, and what to look at next."""
        a, b = self.a.home, self.b.home
        return (
            f"A (nsch) is {a}, B (hkpmc) is {b}; their log lines are in {self.log}, "
            f"the signed referral as A sent it is {self.signed}\n"
            f"Explore them: `gateway --home {a} outbox list`, `gateway --home {a} policy show 1`, "
            f"`gateway --home {b} audit verify`, `gateway --home {a} verify {self.signed}`\n"
        )


def _listening_socket() -> socket.socket:
    """A socket bound to a free port of 127.0.0.1, handed to uvicorn (no race for it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def _logs_into(path: Path) -> Iterator[None]:
    """The gateways' log lines (and uvicorn's) into a file while section 4 runs: two
    gateways talking would interleave theirs with the demo's lines (an overwrite check
    refused as unsigned is expected, and reads as a failure out of context)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in ("gateway", "uvicorn"):
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.level, logger.propagate))
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers = handlers
            logger.setLevel(level)
            logger.propagate = propagate
        handler.close()


def _until(probe: Callable[[], T | None], what: str, seconds: float = WAIT) -> T:
    end = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > end:
            raise StepFailed(f"{what}: not seen within {seconds:g} s")
        time.sleep(0.05)


def _write_private(path: Path, text: str) -> None:
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def _write_home(gw: Gateway, pki: Path) -> None:
    """The gateway's home: its gateway.toml (institution, keys, trust) and nothing else
    of the caller's environment (GATEWAY_DATABASE_URL and the like are not read: SQLite
    in the home, always)."""
    gw.home.mkdir(parents=True)
    (gw.home / "gateway.toml").write_text(
        f'institution = "{gw.key}"\n'
        f'signing_trust = "{pki / "ca"}"\n'
        f'signing_keys = "{pki}"\n'
        f'signing_rules = "*/*={gw.key}"\n' + SETTINGS,
        encoding="utf-8",
    )
    gw.settings = Settings.load(gw.home, env={})


def _inbound_token(receiver: Gateway, sender: str) -> str:
    """``gateway inbound token SENDER`` at the receiver: a token appended to its
    partner-tokens file (0600), given to the sender."""
    assert receiver.settings is not None
    token = secrets.token_urlsafe(32)
    path = receiver.settings.secrets_dir / "partner-tokens"
    private_folder(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(f"{sender} {token}\n")
    return token


def _trust(receiver: Gateway, sender: Gateway) -> None:
    """The receiver makes the sender a token; the sender points at the receiver with it
    (``gateway partners set RECEIVER --url ... --auth bearer --token-file ...``)."""
    assert sender.settings is not None
    token = _inbound_token(receiver, sender.key)
    secret = sender.settings.secrets_dir / f"token-for-{receiver.key}"
    _write_private(secret, token + "\n")
    set_partner(
        sender.settings,
        receiver.key,
        {
            "base": receiver.base,
            "auth": {"type": "bearer", "token_file": str(secret)},
            "write": "transaction",
            "max_entries": 0,  # one request: the signature covers the whole Bundle
        },
    )


def _serve(gw: Gateway) -> None:
    """The gateway's API (``gateway serve`` without listeners or delivery: this process
    delivers) on its socket, in a thread; back once it accepts connections."""
    import uvicorn

    from .api import create_app, server_config

    assert gw.settings is not None
    app = create_app(gw.settings)
    config = server_config(app, gw.settings, host="127.0.0.1", port=gw.port, log_level="warning")

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # a thread: the process's signals stay the process's (Ctrl-C stops the demo)

    gw.server = Server(config)
    # daemon: joined at the end (_stop); one that will not stop must not hold the exit
    gw.thread = threading.Thread(
        target=gw.server.run,
        kwargs={"sockets": [gw.sock]},
        name=f"demo-api-{gw.key}",
        daemon=True,
    )
    gw.thread.start()
    end = time.monotonic() + WAIT
    while not gw.server.started:
        if not gw.thread.is_alive():
            raise StepFailed(f"{gw.key}'s API did not start (its log: gateways.log)")
        if time.monotonic() > end:
            raise StepFailed(f"{gw.key}'s API not listening within {WAIT:g} s")
        time.sleep(0.02)


def _stop(gw: Gateway) -> None:
    if gw.server is not None and gw.thread is not None:
        gw.server.should_exit = True
        gw.thread.join(WAIT)
        if gw.thread.is_alive():  # requests still open after the wait: cut them
            gw.server.force_exit = True
            gw.thread.join(WAIT)
    gw.sock.close()
    if gw.store is not None:
        gw.store.close()
        gw.store = None


def _deliver(gw: Gateway, outbound: Outbound, rows: list[int]) -> None:
    """Deliver the rows now, as ``gateway send --wait`` does, within WAIT seconds."""
    assert gw.settings is not None
    finals = deliver_rows(outbound, DeliveryConfig.from_settings(gw.settings), rows, WAIT)
    for row in finals:
        if row.state != "delivered":
            status = f" (HTTP {row.last_status})" if row.last_status else ""
            why = row.last_error or f"still {row.state} after {WAIT:g} s"
            raise StepFailed(f"outbox {row.id} for {row.partner}: {row.state}: {why}{status}")


def demo_consent(recipient_oid: str) -> dict[str, Any]:
    """The patient's separate consent to the transfer of the referral to the Hong Kong
    centre (named by its OID), FHIR R4 Consent as a hospital sends it (``gateway consent
    import``)."""
    return {
        "resourceType": "Consent",
        "id": "demo-consent-hkpmc-referral",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": HKID[0], "value": HKID[1]}},
        "dateTime": "2026-06-01",
        "provision": {
            "type": "permit",
            "period": {"start": "2026-06-01", "end": "2099-12-31"},
            "actor": [
                {
                    "role": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                "code": "IRCP",
                            }
                        ]
                    },
                    "reference": {
                        "identifier": {
                            "system": "urn:ietf:rfc:3986",
                            "value": f"urn:oid:{recipient_oid}",
                        }
                    },
                }
            ],
            "purpose": [{"system": PURPOSE_SYSTEM, "code": "referral"}],
        },
    }


class _Show:
    """Section 4's lines, in the style of sections 1-3."""

    def __init__(self, out: TextIO, path: GatewayPath) -> None:
        self.out, self.path = out, path

    def ok(self, step: str, facts: str) -> None:
        line = f"  ok    {step:<34} {facts}"
        self.path.lines.append(line)
        self.out.write(line + "\n")
        self.out.flush()

    def error(self, step: str, why: str) -> None:
        line = f"  error {step:<34} {why}"
        self.path.lines.append(line)
        self.out.write(line + "\n")
        self.out.flush()


def run_gateway_path(root: Path, out: TextIO) -> tuple[int, GatewayPath]:
    """Section 4 into ``root`` (removed first); 0 when every step did what it should,
    else 1 (the step's one ``error`` line written)."""
    a = Gateway(A, root / A, _listening_socket())
    b = Gateway(B, root / B, _listening_socket())
    path = GatewayPath(root, a, b, root / "signed-referral.json")
    show = _Show(out, path)
    step = "fresh folder"
    try:
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        with _logs_into(path.log):
            for name, run in _steps(path, root / "pki", show):
                step = name  # the one the error line names, if it fails
                run()
    except (StepFailed, GatewayError, OSError) as exc:
        show.error(step, str(exc) if not isinstance(exc, GatewayError) else exc.issue.line())
        return 1, path
    except Exception as exc:  # any other fault: still one line, and everything stopped
        show.error(step, f"{type(exc).__name__}: {exc}")
        return 1, path
    finally:
        for gw in (a, b):
            _stop(gw)
    return 0, path


def _steps(path: GatewayPath, pki: Path, show: _Show) -> Iterator[tuple[str, Callable[[], None]]]:
    """The steps in order, each (its name, what it does); state shared through ``run``."""
    run = _Run(path, pki, show)
    yield "keys", run.keys
    yield "homes", run.homes
    yield "APIs", run.apis
    yield "consent at A", run.consent
    yield "A stores and converts", run.convert
    yield "A routes, decides, signs", run.outbound
    yield "A delivers to B", run.deliver
    yield "B verifies and receives", run.received
    yield "B accepts, A sees it", run.accept
    yield "audit logs", run.audit


class _Run:
    def __init__(self, path: GatewayPath, pki: Path, show: _Show) -> None:
        self.path, self.pki, self.show = path, pki, show
        self.a, self.b = path.a, path.b
        self.message_id = 0
        self.result: OutboundResult | None = None
        self.outbound_a: Outbound | None = None
        self.referral = ""

    def keys(self) -> None:
        written = make_demo_pki(data_dir("seeds") / "network.yaml", self.pki)
        self.show.ok(
            "demo PKI (gateway keys init)",
            f"network CA and {len(written) - 1} keys and certificates in {self.pki}",
        )

    def homes(self) -> None:
        for gw in (self.a, self.b):
            _write_home(gw, self.pki)
        _trust(self.b, self.a)  # A sends to B: B's inbound token for A, A's partner entry
        _trust(self.a, self.b)  # B sends the referral's status back to A
        for gw, other in ((self.a, self.b), (self.b, self.a)):
            gw.open()
            self.show.ok(
                f"home {gw.key.upper()}",
                f"{gw.home} (SQLite); partner {other.key} at {other.base}, bearer token",
            )

    def apis(self) -> None:
        for gw in (self.b, self.a):
            _serve(gw)
        self.show.ok(
            "APIs on loopback",
            f"B {self.b.key} {self.b.base}, A {self.a.key} {self.a.base}",
        )

    def consent(self) -> None:
        """A cross-border transfer needs the patient's separate consent (the policy's
        consent rule): without it the referral would be held, not sent."""
        assert self.a.settings is not None
        self.outbound_a = Outbound(self.a.settings, self.a.open())
        recipient = self.outbound_a.network.institution(B)
        if recipient is None or not recipient.oid:
            raise StepFailed(f"the network names no {B} with an OID for the consent")
        consent = demo_consent(recipient.oid)
        record, _ = self.outbound_a.policy.import_consent(consent, operator="demo")
        purposes = ",".join(sorted(record.purposes))
        self.show.ok(
            "consent import at A",
            f"{record.id}: the patient (by HKID) consents to {purposes} at "
            f"{','.join(sorted(record.recipients))}",
        )

    def convert(self) -> None:
        assert self.a.settings is not None and self.outbound_a is not None
        store = self.a.open()
        raw = (data_dir("examples") / "hl7v2" / REFERRAL_FILE).read_bytes()
        receipt = store.receive(Incoming(raw, "cli", "hl7v2"))
        audit = store_hook(self.outbound_a.audit, channel="cli")
        outcome = process_message(store, Converter(self.a.settings), receipt.id, audit=audit)
        if outcome.state != "converted":
            first = next(iter(outcome.issues), {})
            raise StepFailed(f"{REFERRAL_FILE}: {outcome.state}: {first.get('message', '')}")
        self.message_id = receipt.id
        bundle = orjson.loads(outcome.output or b"{}")
        kinds = Counter(e["resource"]["resourceType"] for e in bundle.get("entry") or [])
        self.show.ok(
            "A stores and converts",
            f"{REFERRAL_FILE}: message {receipt.id} {outcome.state} → "
            + ", ".join(f"{n} {t}" for t, n in sorted(kinds.items())),
        )

    def outbound(self) -> None:
        assert self.outbound_a is not None and self.a.settings is not None
        result = self.outbound_a.process(self.message_id)
        self.result = result
        routing = result.routings[0] if result.routings else None
        dest = routing.partners.get(B) if routing else None
        if dest is None:
            raise StepFailed(f"routed to no {B}: " + "; ".join(routing.lines() if routing else []))
        self.show.ok("routed", f"rule {','.join(dest.rules)} → {B}, purpose {dest.purpose}")
        placed = next(p for p in result.placed if p.partner == B)
        if placed.decision_id is None:
            raise StepFailed(f"no policy decision for {B}: {placed.outcome}: {placed.reason}")
        decision = self.outbound_a.policy.get(placed.decision_id)
        basis = f"basis {decision.basis}, agreement {decision.agreement}"
        consents = f"consent {','.join(decision.consents)}" if decision.consents else "no consent"
        changes = f"; {len(decision.changes)} fields minimised" if decision.changes else ""
        self.show.ok(
            "cross-border policy",
            f"decision {decision.id}: {decision.outcome} ({decision.sender}→{decision.recipient}, "
            f"{basis}; {consents}{changes})",
        )
        if placed.outbox_id is None:
            raise StepFailed(f"not queued for {B}: {placed.outcome}: {placed.reason}")
        parts = self.outbound_a.outbox.parts(placed.outbox_id)
        signed = orjson.dumps(parts[0], option=orjson.OPT_INDENT_2)
        self.path.signed.write_bytes(signed)
        report = verify_bytes(signed, str(self.path.signed), trust_store(self.a.settings))
        if not report.ok:
            why = report.failures()[0].message
            raise StepFailed(f"the signed Bundle does not verify at A: {why}")
        sig = report.signatures[0]
        self.show.ok(
            "signed (JWS, detached)",
            f"by {sig.signer} ({sig.algorithm}, role {sig.role}); queued as outbox row "
            f"{placed.outbox_id}",
        )

    def deliver(self) -> None:
        assert self.outbound_a is not None and self.result is not None
        rows = [p.outbox_id for p in self.result.placed if p.outbox_id is not None]
        started = time.monotonic()
        _deliver(self.a, self.outbound_a, rows)
        row = self.outbound_a.outbox.require(rows[0])
        last = self.outbound_a.outbox.events(row.id)[-1]
        self.show.ok(
            f"A delivers to B ({B})",
            f"outbox {row.id}: {row.state} ({last.reason}) in {time.monotonic() - started:.1f} s",
        )

    def received(self) -> None:
        assert self.b.settings is not None
        store = self.b.open()
        with store.engine.connect() as conn:
            got = conn.execute(
                sa.select(bundles.c.id, bundles.c.state, bundles.c.raw)
                .where(bundles.c.partner == A)
                .order_by(bundles.c.id)
            ).all()
        if not got or got[-1].state != "applied":
            raise StepFailed(f"B holds no Bundle applied from {A}")
        report = verify_bytes(
            got[-1].raw, f"B's inbound Bundle {got[-1].id}", trust_store(self.b.settings)
        )
        if not report.ok:
            raise StepFailed(f"B's copy does not verify: {report.failures()[0].message}")
        sig = report.signatures[0]
        checks = ", ".join(c.name for c in sig.checks)
        self.show.ok(
            "B verifies the signature",
            f"inbound Bundle {got[-1].id} from {A} applied (B refuses unsigned ones); "
            f"{sig.signer}: {checks} ok",
        )
        found = Referrals(self.b.settings, store).list(direction="received")
        if not found:
            raise StepFailed("B lists no referral received")
        ref = found[0]
        self.referral = (ref.referral or "").split("|")[-1]
        self.show.ok(
            "B receives the referral",
            f"{self.referral} from {ref.partner}: Task {ref.status}",
        )

    def accept(self) -> None:
        assert self.a.settings is not None and self.b.settings is not None
        store_b = self.b.open()
        updated, row, note = Referrals(self.b.settings, store_b).act(self.referral, "accept")
        if row is None:
            raise StepFailed(f"B accepted, the status not queued for {A}: {note}")
        _deliver(self.b, Outbound(self.b.settings, store_b), [row])
        self.show.ok(
            "B accepts", f"{self.referral}: Task {updated.status}; status delivered to {A}"
        )
        referrals = Referrals(self.a.settings, self.a.open())

        def accepted() -> list[Any]:
            return [r for r in referrals.list(direction="sent") if r.status == "accepted"]

        seen = _until(accepted, f"the referral accepted at {A}")
        self.show.ok(
            "A shows the referral's status",
            f"{self.referral} at {seen[0].partner}: {seen[0].status}",
        )

    def audit(self) -> None:
        for gw in (self.a, self.b):
            assert gw.settings is not None
            log = AuditLog(gw.open())
            log.flush()
            verdict = verify_live(log, default_checker(gw.settings))
            if not verdict.ok:
                raise StepFailed(
                    f"{gw.key}'s audit log: " + "; ".join(p.line() for p in verdict.problems[:2])
                )
            self.show.ok(
                f"audit log {gw.key.upper()} verified",
                f"tree size {verdict.entries}: every entry and the Merkle tree intact",
            )
