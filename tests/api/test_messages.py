"""POST /messages/{id}/$reprocess of a message the MLLP listener refused for its sender
(南沙医院's referral sent over HKPMC's connection): 409, an OperationOutcome naming the
message, MSH-4 and why; nothing converted, the attempt audited by the token's name. The
listing and the other routes: tests/store/test_browse_api.py."""

from __future__ import annotations

from pathlib import Path

from gateway.api import TokenSet, create_app
from gateway.audit import AuditLog
from gateway.store import Store
from tests._audit_asserts import refused_event
from tests._sender_refused import HKPMC_NAME, home, keep, nsch_referral
from tests.api.test_app import Client

TOKEN = "messages-test-token-0123456789"


def test_reprocess_of_a_message_refused_for_its_sender_is_refused(tmp_path: Path) -> None:
    settings = home(tmp_path)
    store = Store.for_home(settings.home, settings.database_url)
    try:
        refused = keep(settings, store, nsch_referral(), "HKPMC", HKPMC_NAME)
        app = create_app(settings, tokens=TokenSet([f"{TOKEN} operator ops-desk"]))
        try:
            answer = Client(app).post(
                f"/messages/{refused}/$reprocess", headers={"Authorization": f"Bearer {TOKEN}"}
            )
        finally:
            app.state.messages.close()
        assert answer.status_code == 409
        assert answer.headers["content-type"] == "application/fhir+json"
        [issue] = answer.json()["issue"]
        assert issue["details"]["coding"][0]["code"] == "store.sender-refused"
        assert issue["code"] == "business-rule" and issue["location"] == ["MSH-4"]
        assert issue["details"]["text"] == (
            f"message {refused}: refused when received (intake.mllp-sender-mismatch: its "
            "MSH-4 does not name the institution whose certificate sent it), so never "
            "converted: the institution its MSH-4 names must send it over its own connection"
        )
        assert store.state_of(refused) == "rejected"
        events = [e.resource() for e in AuditLog(store).rows()]
    finally:
        store.close()
    [event] = [e for e in events if str(e.get("outcomeDesc", "")).startswith("reprocess")]
    refused_event(event, "reprocess", "store.sender-refused", "ops-desk", refused)
