"""End to end on loopback (issue #13): two real gateways and the partner server.

- **A**, Nansha (NSCH, mainland), and **B**, the Hong Kong partner (HKPMC), each a
  ``gateway serve`` subprocess with its own ``GATEWAY_HOME``, SQLite store, institution
  and signing key from one demo PKI (both trust its network CA); each knows the other
  as a partner (``gateway partners set ... --auth bearer --token-file``) with a token the
  receiver made (``gateway inbound token``);
- **the partner server** (``../shared/partner-fhir``, strict mode) stands in for the
  third-party FHIR server of NJMU2: A's routes send it the referral too, and Nansha's
  CTA order, study and report (a domestic agreement NSCH–NJMU2 is added to the demo's).

The steps are test functions in order, sharing the running network: the referral
reaches B and the partner server; B accepts and completes it and A shows the Task
completed; the report, study and order sent in the wrong order end linked at the
partner server. Waits poll with a deadline; nothing is asserted on time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest

from gateway.datafiles import data_dir
from gateway.signing import make_demo_pki
from tests.conftest import REPO
from tests.gateway_cli import run
from tests.partner.conftest import (
    PartnerServer,
    partner,  # noqa: F401  (the real partner server)
)
from tests.policy.conftest import HKID, consent

HL7 = REPO / "examples" / "hl7v2"
IMAGING = REPO / "examples" / "imaging"
REFERRAL = "https://fhir.nsch.example.cn/sid/referral|REF20260618001"
ACCESSION = "https://fhir.nsch.example.cn/sid/accession|NS2026061500017"
STUDY = "urn:dicom:uid|urn:oid:2.16.156.10011.99.1.1.3.20260615.17"
REPORT = "https://fhir.nsch.example.cn/sid/report|NSR2026061601"
LOCAL = "local-api-token-0123456789abcdef"  # each gateway's local API token
DEADLINE = 90.0  # seconds any one wait may take on a loaded machine

# A's routes: the demo's referral rule, plus the partner server (as NJMU2) for the
# referral and for Nansha's CTA.
ROUTES = """
routes:
  - id: referral-to-its-target-and-the-partner-server
    description: a referral goes to its target, and to the partner server
    when:
      message_type: [REF^I12, REF^I14]
    to: [target, njmu2]
    purpose: referral
  - id: nansha-cta-to-the-partner-server
    description: Nansha's CT order, study and report go to the partner server
    when:
      sender: [NSCH]
      message_type: [OMI^O23, dicom-study, ORU^R01]
    to: [njmu2]
    purpose: second-opinion
"""
AGREEMENT = """
  - id: DOM-2026-NSCH-NJMU2-E2E
    basis: domestic
    parties: [nsch, njmu2]
    purposes: [referral, second-opinion, continuing-care]
    categories: [demographics, clinical, imaging]
    valid: {from: "2026-01-01", to: "2099-12-31"}
"""
SERVE_ENV = {
    "GATEWAY_DELIVERY_POLL_SECONDS": "0.1",
    "GATEWAY_DELIVERY_BACKOFF_BASE": "0.2",
    "GATEWAY_DELIVERY_BACKOFF_CAP": "1",
    "GATEWAY_DELIVERY_MAX_ATTEMPTS": "50",
    "GATEWAY_DELIVERY_READ_TIMEOUT": "30",
    "GATEWAY_LOG_LEVEL": "info",
}

T = TypeVar("T")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Gateway:
    key: str
    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        done = run(*args, home=self.home)
        assert done.returncode == 0, (args, done.stdout.decode(), done.stderr.decode())
        return done

    def get(self, path: str, **params: str) -> list[dict[str, Any]]:
        answer = httpx.get(
            f"{self.base}/{path}",
            params=params,
            headers={"Authorization": f"Bearer {LOCAL}"},
            timeout=30,
        )
        answer.raise_for_status()
        return [e["resource"] for e in answer.json().get("entry", [])]

    def log(self) -> str:
        return (self.home / "serve.log").read_text(encoding="utf-8", errors="replace")[-4000:]


def _home(root: Path, key: str, pki: Path, agreements: Path) -> Gateway:
    home = root / key
    (home / "secrets").mkdir(parents=True)
    (home / "secrets" / "api-tokens").write_text(LOCAL + "\n", encoding="utf-8")
    (home / "secrets" / "api-tokens").chmod(0o600)  # a readable token file is refused
    (home / "gateway.toml").write_text(
        f'institution = "{key}"\n'
        f'signing_trust = "{pki / "ca"}"\n'
        f'signing_keys = "{pki}"\n'
        f'signing_rules = "*/*={key}"\n'
        f'policy_agreements = "{agreements}"\n',
        encoding="utf-8",
    )
    return Gateway(key, home, _port())


def _serve(gw: Gateway) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(SERVE_ENV, GATEWAY_HOME=str(gw.home))
    code = (
        "import sys\nfrom gateway.cli import main\n"
        f"sys.exit(main(['--home', {str(gw.home)!r}, 'serve', '--port', '{gw.port}']))\n"
    )
    with (gw.home / "serve.log").open("wb") as log:
        gw.process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, cwd=REPO, stdout=log, stderr=log
        )
    _until(lambda: _up(gw), f"{gw.key} listening", gw)


def _up(gw: Gateway) -> bool:
    assert gw.process is not None and gw.process.poll() is None, gw.log()
    try:
        return httpx.get(f"{gw.base}/metadata", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _until(probe: Callable[[], T | None], what: str, *logs: Gateway) -> T:
    """Poll ``probe`` until it gives something truthy, for at most DEADLINE seconds."""
    end = time.monotonic() + DEADLINE
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > end:
            said = "\n".join(f"--- {gw.key} log:\n{gw.log()}" for gw in logs)
            pytest.fail(f"not seen within {DEADLINE:.0f} s: {what}\n{said}")
        time.sleep(0.3)


def _trust(receiver: Gateway, sender: Gateway, root: Path) -> None:
    """The receiver makes a token for the sender; the sender points at the receiver."""
    token = receiver.cli("inbound", "token", sender.key).stdout.decode().strip()
    secret = root / f"{sender.key}-to-{receiver.key}.token"
    secret.write_text(token + "\n", encoding="utf-8")
    secret.chmod(0o600)
    sender.cli(
        "partners", "set", receiver.key,
        "--url", receiver.base,
        "--auth", "bearer",
        "--token-file", str(secret),
        "--write", "transaction",
        "--max-entries", "0",  # one request: the signature covers the whole Bundle
    )  # fmt: skip


@dataclass
class Network:
    a: Gateway
    b: Gateway
    partner: PartnerServer
    root: Path


@pytest.fixture(scope="module")
def net(
    partner: PartnerServer,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Network]:
    partner.reset()
    root = tmp_path_factory.mktemp("e2e")
    pki = root / "pki"
    make_demo_pki(data_dir("seeds") / "network.yaml", pki)
    agreements = root / "agreements.yaml"
    seeds = (data_dir("seeds") / "agreements.yaml").read_text(encoding="utf-8")
    agreements.write_text(seeds.rstrip("\n") + "\n" + AGREEMENT, encoding="utf-8")
    a = _home(root, "nsch", pki, agreements)
    b = _home(root, "hkpmc", pki, agreements)
    routes = root / "routes.yaml"
    routes.write_text(ROUTES, encoding="utf-8")
    with (a.home / "gateway.toml").open("a", encoding="utf-8") as toml:
        toml.write(f'delivery_routes = "{routes}"\n')
    _trust(b, a, root)
    _trust(a, b, root)
    a.cli("partners", "set", "njmu2", "--url", partner.base, "--max-entries", "8")
    # The patient's consent to the transfer to Hong Kong, given at Nansha.
    given = root / "consent.json"
    given.write_bytes(
        orjson.dumps(consent((HKID, "K583726A"), "HKPMC", start="2026-01-01", end="2099-12-31"))
    )
    a.cli("consent", "import", str(given))
    try:
        for gw in (a, b):
            _serve(gw)
        yield Network(a, b, partner, root)
    finally:
        for gw in (a, b):
            if gw.process is not None:
                gw.process.terminate()
                try:
                    gw.process.wait(30)
                except subprocess.TimeoutExpired:
                    gw.process.kill()
                    gw.process.wait(10)


def test_a_referral_sent_at_a_reaches_b_and_the_partner_server(net: Network) -> None:
    net.a.cli("send", str(HL7 / "ref_i12_nsch_to_hkpmc.hl7"))
    at_b = _until(
        lambda: net.b.get("ServiceRequest", identifier=REFERRAL), "the referral at B", net.a, net.b
    )
    assert len(at_b) == 1
    tasks = net.b.get("Task", status="requested")
    assert [t["focus"]["identifier"]["value"] for t in tasks] == ["REF20260618001"]
    at_partner = _until(
        lambda: net.partner.search(f"ServiceRequest?identifier={REFERRAL}"),
        "the referral at the partner server",
        net.a,
    )
    assert len(at_partner) == 1
    # Both partners' rows delivered at A (B took it signed: it refuses unsigned Bundles).
    rows = orjson.loads(net.a.cli("outbox", "list", "--json").stdout)
    assert sorted((r["partner"], r["state"]) for r in rows) == [
        ("hkpmc", "delivered"),
        ("njmu2", "delivered"),
    ]


def test_as_overwrite_check_at_b_is_answered_not_refused(net: Network) -> None:
    """A asked B before sending (the overwrite check: a batch of searches); B answers
    it as reads (docs/inbound.md, "A batch of reads"): no refused Bundle kept at B, no
    refusal in its log, and A asks B by batch still (its worker never fell back)."""
    import sqlalchemy as sa

    from gateway import Settings
    from gateway.inbound import bundles
    from gateway.store import open_store

    store = open_store(Settings.load(home=net.b.home, env={}))
    try:
        with store.engine.connect() as conn:
            states = conn.execute(sa.select(bundles.c.partner, bundles.c.state)).all()
    finally:
        store.close()
    assert states and {tuple(r) for r in states} == {("nsch", "applied")}, states
    served = (net.b.home / "serve.log").read_text(encoding="utf-8", errors="replace")
    assert "a Bundle from nsch refused" not in served, served[-4000:]  # _receive.py's warning


def _sent(a: Gateway) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = orjson.loads(
        a.cli("referrals", "list", "--direction", "sent", "--json").stdout
    )
    return found


def test_b_accepts_and_completes_and_a_shows_the_status(net: Network) -> None:
    accepted = orjson.loads(net.b.cli("referrals", "accept", "REF20260618001", "--json").stdout)
    assert accepted["status"] == "accepted" and "queued for nsch" in accepted["note"]
    _until(
        lambda: [r for r in _sent(net.a) if r["status"] == "accepted"],
        "the referral accepted at A",
        net.a,
        net.b,
    )
    done = orjson.loads(net.b.cli("referrals", "complete", "REF20260618001", "--json").stdout)
    assert done["status"] == "completed"
    shown = _until(
        lambda: [r for r in _sent(net.a) if r["status"] == "completed"],
        "the referral completed at A",
        net.a,
        net.b,
    )
    assert [(r["partner"], r["referral"]) for r in shown] == [("hkpmc", REFERRAL)]
    # B's outbox: both statuses delivered to A, in order.
    rows = orjson.loads(net.b.cli("outbox", "list", "--json").stdout)
    assert [r["state"] for r in rows] == ["delivered", "delivered"]


def test_order_study_and_report_sent_in_the_wrong_order_end_linked_at_the_partner(
    net: Network,
) -> None:
    for given in (
        IMAGING / "oru_r01_nsch_cta_zh.hl7",
        IMAGING / "nsch_cta.study",
        HL7 / "omi_o23_nsch_ct.hl7",
    ):
        net.a.cli("send", str(given))

    def linked() -> tuple[dict[str, Any], ...] | None:
        found = tuple(
            net.partner.search(f"{kind}?identifier={ident}")
            for kind, ident in (
                ("ServiceRequest", ACCESSION),
                ("ImagingStudy", STUDY),
                ("DiagnosticReport", REPORT),
            )
        )
        if not all(found):
            return None
        assert [len(f) for f in found] == [1, 1, 1]  # once each
        return tuple(f[0] for f in found)

    request, study, report = _until(linked, "order, study and report at the partner", net.a)
    assert study["basedOn"][0]["reference"] == f"ServiceRequest/{request['id']}"
    assert report["basedOn"][0]["reference"] == f"ServiceRequest/{request['id']}"
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{study['id']}"
    # The references resolve at the partner.
    assert net.partner.search(f"ServiceRequest?_id={request['id']}")
    assert net.partner.search(f"ImagingStudy?_id={study['id']}")
