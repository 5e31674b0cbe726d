"""Adversarial review of referral status: NSCH sent its referral REF20260618001 to
HKPMC; only HKPMC may report its status. NSGP (another partner, with credentials of its
own) sent a Task about it, and ``gateway referrals list --direction sent`` showed
NSGP's status as the referral's. Such a Task is now refused (403 inbound.wrong-sender,
naming the entry's focus), and one stored before is never listed as a status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import Settings
from gateway.inbound import Inbound, PartnerAuth, Referrals, Resources
from gateway.signing import sign_bundle
from gateway.store import open_store
from tests.gateway_cli import run

from .conftest import MRN, REFERRAL_SYSTEM, counts, make_home, record_sent, signer

REFERRAL = (REFERRAL_SYSTEM, "REF20260618001")
BASES = {"hkpmc": "https://fhir.hkpmc.example.hk", "nsgp": "https://fhir.nsgp.example.cn"}


@pytest.fixture
def nsch(tmp_path: Path, pki: Path) -> Settings:
    """NSCH's gateway, which sent the referral to HKPMC (its outbox row)."""
    tokens = {"hkpmc": "hkpmc-partner-token-0123456789abcdef",
              "nsgp": "nsgp-partner-token-0123456789abcdef"}  # fmt: skip
    settings = make_home(tmp_path / "nsch", pki, "nsch", tokens)
    record_sent(settings, "hkpmc", REFERRAL)
    return settings


def _status(
    pki: Path, who: str, status: str, referral: tuple[str, str] = REFERRAL,
    patient: tuple[str, str] | None = MRN, task_for: dict[str, Any] | None = None,
) -> bytes:  # fmt: skip
    """``who``'s signed Task, status ``status``, about the referral, for the patient
    with identifier ``patient`` (else ``task_for``, else none), as a receiving
    gateway's status Bundle is: a conditional update by its own Task identifier."""
    base = BASES[who]
    task_id = f"{base}/sid/referral-task|NSCH-{referral[1]}"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": f"{base}/sid/referral-status", "value": f"{who}-{status}"},
        "entry": [
            {
                "fullUrl": "urn:uuid:6f0b3c1e-2a4d-4e8f-9b7a-1c2d3e4f5a6b",
                "resource": {
                    "resourceType": "Task",
                    "identifier": [dict(zip(("system", "value"), task_id.split("|"), strict=True))],
                    "status": status,
                    "intent": "order",
                    "focus": {"type": "ServiceRequest",
                              "identifier": {"system": referral[0], "value": referral[1]}},
                },
                "request": {"method": "PUT", "url": f"Task?identifier={task_id}"},
            }
        ],
    }  # fmt: skip
    task = bundle["entry"][0]["resource"]
    if patient is not None:
        task["for"] = {"type": "Patient", "identifier": dict(zip(("system", "value"), patient,
                                                                  strict=True))}  # fmt: skip
    elif task_for is not None:
        task["for"] = task_for
    return orjson.dumps(sign_bundle(bundle, signer(pki, who), "author"))


def _receive(settings: Settings, body: bytes, who: str) -> Any:
    store = open_store(settings)
    try:
        return Inbound(settings, store).receive(body, PartnerAuth(who, "bearer"))
    finally:
        store.close()


def _listed(settings: Settings) -> list[tuple[str, str, str]]:
    shown = run("referrals", "list", "--direction", "sent", "--json", home=settings.home)
    assert shown.returncode == 0, shown.stderr.decode()
    return [(r["partner"], r["referral"], r["status"]) for r in orjson.loads(shown.stdout)]


def test_a_third_partys_status_of_our_referral_is_refused(nsch: Settings, pki: Path) -> None:
    spoofed = _receive(nsch, _status(pki, "nsgp", "rejected"), "nsgp")
    assert spoofed.status == 403, spoofed.body
    issue = spoofed.body["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.wrong-sender"
    assert issue["expression"] == ["Bundle.entry[0].resource.focus"]
    assert "REF20260618001" not in issue["diagnostics"]
    assert counts(nsch)["inbound_resources"] == 0
    assert _listed(nsch) == []
    # the partner the referral went to reports it
    accepted = _receive(nsch, _status(pki, "hkpmc", "accepted"), "hkpmc")
    assert accepted.status == 200, accepted.body
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]
    assert _receive(nsch, _status(pki, "nsgp", "completed"), "nsgp").status == 403
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]


def test_a_status_of_a_referral_of_ours_never_sent_is_refused(nsch: Settings, pki: Path) -> None:
    # under NSCH's own identifier base, but no outbox row carried it to anyone
    never = (REFERRAL_SYSTEM, "REF20260618999")
    answer = _receive(nsch, _status(pki, "hkpmc", "accepted", never), "hkpmc")
    assert answer.status == 403, answer.body
    assert answer.body["issue"][0]["details"]["coding"][0]["code"] == "inbound.wrong-sender"


def test_a_spoofed_status_stored_before_is_never_listed(nsch: Settings, pki: Path) -> None:
    # as a gateway before this fix stored it: NSGP's Task about the referral
    task = orjson.loads(_status(pki, "nsgp", "rejected"))["entry"][0]["resource"]
    store = open_store(nsch)
    try:
        with store.engine.begin() as conn:
            Resources(store).write(conn, task, partner="nsgp")
        assert Referrals(nsch, store).list(direction="sent") == []
    finally:
        store.close()
    assert _listed(nsch) == []
    assert _receive(nsch, _status(pki, "hkpmc", "accepted"), "hkpmc").status == 200
    assert _listed(nsch) == [("hkpmc", "|".join(REFERRAL), "accepted")]
