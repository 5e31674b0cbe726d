"""A Consent holding U+0000 (NUL) in a string is refused at import, naming its element:
FHIR strings carry no NUL; a status "active\\0" passed the R4 model (a code's pattern
lets it through) and was kept as such on SQLite, and on PostgreSQL, whose text holds no
NUL, the insert failed (POST /Consent answered 500)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.policy import Policy, PolicyError, PolicyRecords
from gateway.store import Store
from tests.store.dbs import BACKENDS, database

from .conftest import HKID, consent


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with contextlib.contextmanager(database)(request.param, tmp_path) as url:
        opened = Store.open(url)
        try:
            yield opened
        finally:
            opened.close()


def _status(c: dict[str, Any]) -> None:
    c["status"] = "active\0"


def _text(c: dict[str, Any]) -> None:
    c["scope"]["text"] = "私隱\0"


def _patient(c: dict[str, Any]) -> None:
    c["patient"]["identifier"]["value"] = "A123\x004563"


@pytest.mark.parametrize(
    ("change", "element"),
    [
        (_status, "Consent.status"),
        (_text, "Consent.scope.text"),
        (_patient, "Consent.patient.identifier.value"),
    ],
    ids=["status", "text", "identifier"],
)
def test_a_consent_holding_nul_is_refused_naming_the_element(
    store: Store, policy: Policy, change: Any, element: str
) -> None:
    records = PolicyRecords(store, policy)
    sent = consent((HKID, "A1234563"), "HKPMC")
    change(sent)
    with pytest.raises(PolicyError) as refused:
        records.import_consent(sent)
    assert refused.value.code == "policy.consent-invalid"
    assert refused.value.location == element
    assert "U+0000" in refused.value.issue.message and "A123" not in str(refused.value)
    assert records.list_consents(f"{HKID}|A1234563") == []


def test_a_nul_nested_deeper_than_python_recurses_is_refused(store: Store, policy: Policy) -> None:
    """orjson reads 1,024 levels: the search for a NUL walks them without recursion (a
    RecursionError was a 500)."""
    records = PolicyRecords(store, policy)
    sent = consent((HKID, "A1234563"), "HKPMC")
    sent["extension"] = [{"url": "https://example.org/deep", "valueString": "ok", "x": "DEEP"}]
    deep = b"[" * 1_020 + b'"x\\u0000"' + b"]" * 1_020  # orjson writes only 254 levels
    body = orjson.dumps(sent).replace(b'"DEEP"', deep)
    with pytest.raises(PolicyError) as refused:
        records.import_consent(body)
    assert refused.value.code == "policy.consent-invalid"
    assert refused.value.location.startswith("Consent.extension[0].x[0][0]")
