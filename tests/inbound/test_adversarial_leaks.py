"""Adversarial review of the inbound path as an auditor: no patient data in the logs,
nor in what a refusal says. The demo-wide log test (tests/test_logs.py) converts; this
one receives and searches: a partner's Bundle and a local system's search by MRN go
through a real uvicorn server logging at info level (its access lines included), and
the refusal of a malformed condition names its form, not the value."""

from __future__ import annotations

import copy
import io
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app, server_config
from gateway.logs import configure
from gateway.signing import sign_bundle
from tests.api.test_app import Client

from .conftest import LOCAL, LOCAL_AUTH, NSCH_TOKEN, partner, signer

MRN = "0098765"
HKID = "K583726A"
NAMES = ("許嘉瑋", "许嘉玮", "HUI")


def test_receiving_and_searching_log_no_patient_data(
    hk_settings: Settings, converter: Converter, signed_referral: bytes
) -> None:
    out = io.StringIO()
    configure("debug", "json", stream=out, loggers=("gateway", "uvicorn"))
    app = create_app(hk_settings, converter, TokenSet([LOCAL]))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, hk_settings, host="127.0.0.1", port=port,
                                          log_level="debug"))  # fmt: skip
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.02)
        base = f"http://127.0.0.1:{port}"
        sent = httpx.post(f"{base}/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
        assert sent.status_code == 200
        for query in (
            f"identifier=https://fhir.nsch.example.cn/sid/mrn|{MRN}",
            f"identifier={HKID}",
            f"patient=https://fhir.nsch.example.cn/sid/mrn|{MRN}",
        ):
            found = httpx.get(f"{base}/fhir/Patient?{query}", headers=LOCAL_AUTH)
            assert found.status_code == 200
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()
        app.state.fhir.close()
        configure("warning")
    logged = out.getvalue()
    assert "GET /fhir/Patient" in logged  # the access lines are there
    for value in (MRN, HKID, *NAMES):
        assert value not in logged, value


def test_a_malformed_condition_is_named_by_its_form(
    client: Client, referral: dict[str, Any], pki: Path
) -> None:
    # ifNoneExist with the MRN alone (no "identifier="): the refusal quoted it
    bundle = copy.deepcopy(referral)
    bundle["entry"][2]["request"]["ifNoneExist"] = MRN
    body = orjson.dumps(sign_bundle(bundle, signer(pki, "nsch"), "author"))
    resp = client.post("/fhir", content=body, headers=partner(NSCH_TOKEN))
    assert resp.status_code == 400, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.bad-condition"
    assert MRN not in resp.text
    found = client.get(f"/fhir/Patient?{MRN}=x", headers=LOCAL_AUTH)
    assert found.status_code == 400 and MRN not in found.text
