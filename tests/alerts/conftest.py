"""Alerts fixtures: a store on each database backend with outbox rows made by the real
Outbox, settings in a temporary GATEWAY_HOME, a real local webhook receiver (http.server
in a thread) and a real local SMTP server (aiosmtpd, STARTTLS and AUTH)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509

import gateway.alerts  # noqa: F401  (its table joins the store's metadata)
from gateway.config import Settings
from gateway.delivery import Outbox
from gateway.partners import Partner
from gateway.store import Incoming, Store
from tests._certs import certificate, write_pem
from tests.store.dbs import BACKENDS, database

T0 = dt.datetime(2026, 12, 5, 8, 0, 0)  # naive UTC, as the store keeps times
MRN = "urn:oid:1.3.6.1.4.1.99999.1.1.2"
PATIENT_NAME = "陳大文"  # must never appear in an alert
PATIENT_MRN = "HK0098765"


def bundle(order: str, patient: str = PATIENT_MRN) -> dict[str, Any]:
    pid = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, patient)}"
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pid,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": MRN, "value": patient}],
                    "name": [{"text": PATIENT_NAME}],
                },
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, order)}",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "identifier": [{"system": "urn:x:orders", "value": order}],
                    "status": "active",
                    "intent": "order",
                    "subject": {"reference": pid},
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
        ],
    }


class Queue:
    """Outbox rows for a partner, made the way the outbound path makes them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.outbox = Outbox(store)
        self.n = 0

    def add(self, partner: str, count: int = 1, at: dt.datetime = T0) -> list[int]:
        ids = []
        for _ in range(count):
            self.n += 1
            row, _new = self.outbox.enqueue(
                Partner(partner, f"https://fhir.{partner}.example/fhir"),
                bundle(f"ORD{self.n}"),
                order_key=f"{MRN}|{PATIENT_MRN}-{self.n}",
                now=at,
            )
            ids.append(row)
        return ids

    def move(self, rows: list[int], to: str, at: dt.datetime = T0) -> None:
        for row in rows:
            state = self.outbox.require(row).state
            self.outbox.move(row, state, to, f"test: {to}", now=at)

    def hold(self, partner: str, count: int = 1, at: dt.datetime = T0) -> None:
        """Rows the policy holds for consent (as _outbound.py holds them)."""
        for _ in range(count):
            self.n += 1
            raw = f"MSH|^~\\&|HIS|LAX2|GW|GW|20260101||ORU^R01|C{self.n}|P|2.5\r".encode()
            message = self.store.receive(
                Incoming(raw, "cli", sender="LAX2", control_id=f"C{self.n}")
            )
            self.outbox.hold(
                partner,
                message_id=message.id,
                record=0,
                purpose="referral",
                order_key=None,
                label=None,
                dedup=f"held-{self.n}",
                code="policy.held",
                reason="policy.held: no consent on file",
                now=at,
            )


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database(request.param, tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def queue(store: Store) -> Queue:
    return Queue(store)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def write_overrides(home: Path, text: str) -> Path:
    path = home / "alerts.yaml"
    path.write_text(text, encoding="utf-8")
    return path


# Small thresholds, so that a test queues a few rows: every partner.
SMALL = """
alerts:
  defaults:
    queue_depth: {warning: 3, critical: 5}
    oldest_age: {warning: 15m, critical: 1h}
    dead_letters: {warning: 1}
    policy_holds: {warning: 2}
"""


@pytest.fixture
def settings(home: Path) -> Settings:
    write_overrides(home, SMALL)
    return replace(Settings.load(home, env={}), institution="nsch")


# -- a webhook receiver ------------------------------------------------------------------


@dataclass
class Hook:
    url: str
    received: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to give first, then 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    def events(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return [(b["event"], b["partner"], b["kind"]) for _, b in self.received]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with state.lock:
                status = state.answers.pop(0) if state.answers else 200
                if status == 200:
                    state.received.append((dict(self.headers), json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/gateway-alerts"
    yield state
    server.shutdown()
    server.server_close()


# -- an SMTP server ----------------------------------------------------------------------


@dataclass
class Mailbox:
    host: str
    port: int
    ca_file: Path
    user: str
    password: str
    messages: list[tuple[Envelope, EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def subjects(self) -> list[str]:
        return [str(m["Subject"]) for _, m in self.messages]


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed server certificate for 127.0.0.1 (its own CA)."""
    san: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    key, cert = certificate("smtp.test", ca=True, san=san)
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    write_pem(cert_file, key_file, cert, key)
    return cert_file, key_file


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def mailbox(tmp_path: Path) -> Iterator[Mailbox]:
    cert_file, key_file = _certificate(tmp_path)
    box = Mailbox("127.0.0.1", _free_port(), cert_file, "gateway", "s3cret-for-tests")

    class Handler:
        async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
            raw = envelope.original_content or b""
            parsed = message_from_bytes(raw, policy=policy.default)
            assert isinstance(parsed, EmailMessage)
            box.messages.append((envelope, parsed))
            return "250 OK"

    def authenticate(
        server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = (
            isinstance(data, LoginPassword)
            and data.login.decode() == box.user
            and data.password.decode() == box.password
        )
        if ok:
            box.logins.append(box.user)
        return AuthResult(success=ok, handled=False)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    controller = Controller(
        Handler(),
        hostname=box.host,
        port=box.port,
        tls_context=context,
        require_starttls=True,
        authenticator=authenticate,
        auth_required=True,
        auth_require_tls=True,
    )
    controller.start()
    yield box
    controller.stop()
