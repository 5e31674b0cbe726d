"""POST /fhir leaves its AuditEvents: the signature verified, then the receipt (success,
or the refusal's code), the patient by a pseudonym; the same Bundle again adds none."""

from __future__ import annotations

import orjson

from gateway import Settings, validation
from gateway.audit import PSEUDONYM, AuditLog
from gateway.audit._events import keys_of
from gateway.store import open_store
from tests.api.test_app import Client
from tests.inbound.conftest import (  # noqa: F401  (fixtures)
    NSCH_TOKEN,
    client,
    hk_settings,
    partner,
    pki,
    referral,
    signed_referral,
)


def logged(settings: Settings) -> list[dict[str, object]]:
    store = open_store(settings)
    try:
        return [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()


def test_a_received_referral_and_a_tampered_one(
    client: Client,  # noqa: F811
    hk_settings: Settings,  # noqa: F811
    signed_referral: bytes,  # noqa: F811
) -> None:
    assert client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN)).is_success
    again = client.post("/fhir", content=signed_referral, headers=partner(NSCH_TOKEN))
    assert again.is_success  # the stored answer: no new events
    bundle = orjson.loads(signed_referral)
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "Patient":
            entry["resource"]["name"][0]["text"] = "许家伟"
    bad = client.post("/fhir", content=orjson.dumps(bundle), headers=partner(NSCH_TOKEN))
    assert bad.status_code == 422
    found = logged(hk_settings)
    assert [(keys_of(e)[0], e["outcome"], e.get("outcomeDesc")) for e in found] == [
        ("signature-verified", "0", None),
        ("inbound", "0", None),
        ("signature-verified", "8", "signing.content-changed"),
        ("inbound", "8", "signing.content-changed"),
    ]
    patients = {keys_of(e)[2] for e in found}
    assert len(patients) == 1 and next(iter(patients), "").startswith(PSEUDONYM + "|")
    assert {keys_of(e)[3] for e in found if keys_of(e)[0] == "inbound"} == {"nsch"}
    for event in found:
        problems = [
            i.line()
            for i in validation.validate_resource(event, all_issues=True)
            if i.severity in ("error", "fatal")
        ]
        assert problems == [], keys_of(event)[0]
    text = orjson.dumps(found).decode()
    assert "0098765" not in text and "許嘉瑋" not in text
