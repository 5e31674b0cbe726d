"""POST /Consent under an identifier the policy's counters know several different people
share (a placeholder HKID): refused with 422 and an OperationOutcome naming the element
and the code (policy.consent-ambiguous-patient), and nothing is stored — kept, it would
look like a consent on file while the decisions ignore it (docs/policy.md)."""

from __future__ import annotations

from pathlib import Path

import orjson

from gateway import Converter, Settings
from gateway.api import TokenSet, create_app
from gateway.policy import Policy, PolicyRecords
from gateway.store import open_store
from tests.api.test_app import Client
from tests.policy.conftest import HKID, NOW, bundles, consent  # noqa: F401  (bundles: a fixture)
from tests.policy.test_individuals import MRN, PLACEHOLDER, patient_with

TOKEN = "test-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/fhir+json"}
SENDER, RECIPIENT, PURPOSE = "LAX2", "HKPMC", "second-opinion"


def test_post_consent_under_a_known_shared_identifier_is_422_and_not_kept(
    tmp_path: Path,
    converter: Converter,
    bundles: dict[str, bytes],  # noqa: F811  (the fixture)
) -> None:
    settings = Settings.load(home=tmp_path, env={})
    store = open_store(settings)
    records = PolicyRecords(store, Policy(settings))
    # Two people (different MRNs) sent with the placeholder, each on a consent by MRN:
    # counted apart, both holding it.
    for mrn in ("0012345", "0067890"):
        own = (MRN, mrn)
        records.import_consent(consent(own, RECIPIENT, (PURPOSE,), ident=f"c-{mrn}"), now=NOW)
        sent = patient_with(bundles["ref_i12_lax2_to_njmu2"], [own, PLACEHOLDER], "王", "伟")
        assert records.apply(None, sent, SENDER, RECIPIENT, PURPOSE, now=NOW).allowed
    store.close()
    app = create_app(settings, converter, TokenSet([TOKEN]))
    client = Client(app)
    try:
        body = orjson.dumps(consent(PLACEHOLDER, RECIPIENT, (PURPOSE,), ident="c-placeholder"))
        resp = client.post("/Consent", content=body, headers=HEADERS)
        assert resp.status_code == 422, resp.text
        outcome = resp.json()
        assert outcome["resourceType"] == "OperationOutcome"
        issue = outcome["issue"][0]
        assert issue["details"]["coding"][0]["code"] == "policy.consent-ambiguous-patient"
        assert issue["location"] == ["Consent.patient.identifier"]  # the element (docs/errors.md)
        assert HKID in resp.text and PLACEHOLDER[1] not in resp.text  # the system only
        # Nothing stored: the placeholder has no consent on file, the others are kept.
        found = client.get(f"/Consent?patient={HKID}|{PLACEHOLDER[1]}", headers=HEADERS)
        assert found.status_code == 200 and not found.json().get("entry")
    finally:
        app.state.fhir.close()
        app.state.messages.close()
    store = open_store(settings)
    try:
        kept = [r.id for r in PolicyRecords(store, Policy(settings)).list_consents()]
    finally:
        store.close()
    assert kept == ["c-0012345", "c-0067890"]
