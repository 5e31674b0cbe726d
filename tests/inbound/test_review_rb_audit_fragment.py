"""``GET /fhir/AuditEvent`` (its own route, before ``/fhir/{type}``) read a fragment
as the rest routes did before they refused it: ``patient=Patient/<id>#x`` searched for
``Patient/<id>#x``, an empty searchset an auditor reads as "nobody read this patient's
records", ``_count=1#x`` "not a number". It is 400 ``request.invalid`` as every GET
route's (docs/inbound.md); ``%23`` is a value's '#', searched."""

from __future__ import annotations

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from tests.api.live import live_server
from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, partner
from .test_read_batch import _code, _raw_get

AUDITOR = "auditor-api-token-0123456789"


def test_the_audit_event_routes_refuse_a_fragment(
    client: Client, signed_referral: bytes, hk_settings: Settings, converter: Converter
) -> None:
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    ref = client.get("/fhir/Patient", headers=partner(NSCH_TOKEN)).json()["entry"][0]["fullUrl"]
    patient = "Patient/" + ref.rsplit("/Patient/", 1)[1]
    app = create_app(hk_settings, converter, TokenSet([f"{AUDITOR} auditor"]))
    try:
        with live_server(app, hk_settings) as port:
            plain = _raw_get(port, f"/fhir/AuditEvent?patient={patient}", AUDITOR)
            assert plain[0] == 200 and plain[1]["entry"], plain
            escaped = _raw_get(port, f"/fhir/AuditEvent?patient={patient}%23x", AUDITOR)
            assert escaped[0] == 200 and escaped[1]["entry"] == []  # a value's '#'
            for target in (f"/fhir/AuditEvent?patient={patient}#x", "/fhir/AuditEvent?_count=1#x",
                           "/fhir/AuditEvent/1#x"):  # fmt: skip
                status, outcome = _raw_get(port, target, AUDITOR)
                assert status == 400, (target, outcome)
                assert _code(outcome) == "request.invalid" and "fragment" in str(outcome)
            assert _raw_get(port, "/fhir/AuditEvent?_count=1#x", "wrong-token-012345678")[0] == 401
    finally:
        app.state.fhir.close()
