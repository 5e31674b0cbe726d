"""Adversarial review of the inbound reads (GET /fhir/{type}?...): search values at the
edges of the calendar and of the database's integers are a 400 (or an empty page),
never a 500. Each was a 500 (OverflowError, ValueError) before the fix."""

from __future__ import annotations

import pytest

from tests.api.test_app import Client

from .conftest import LOCAL_AUTH


@pytest.mark.parametrize(
    "value",
    ["9999", "9999-12", "ge9999-12-31T23:59:59Z", "0001-01-01T00:00:00%2B01:00",
     "9999-12-31T23:59:59-01:00"],
    ids=["year-9999", "month-9999-12", "last-second", "before-year-1", "after-9999"],
)  # fmt: skip
def test_a_last_updated_at_the_calendars_edge_is_400(client: Client, value: str) -> None:
    resp = client.get(f"/fhir/Patient?_lastUpdated={value}", headers=LOCAL_AUTH)
    assert resp.status_code == 400, resp.text
    issue = resp.json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "inbound.bad-search"
    assert issue["location"] == ["_lastUpdated"]


def test_a_cursor_beyond_the_databases_integers_is_an_empty_page(client: Client) -> None:
    resp = client.get("/fhir/Patient?_after=99999999999999999999999", headers=LOCAL_AUTH)
    assert resp.status_code == 200, resp.text
    assert resp.json()["entry"] == []


@pytest.mark.parametrize("name", ["_count", "_after"])
@pytest.mark.parametrize("value", ["\u00b2", "\u0662"], ids=["superscript-two", "arabic-indic"])
def test_a_number_in_other_digits_is_400(client: Client, name: str, value: str) -> None:
    """``"²".isdigit()`` holds and ``int("²")`` raised ValueError: a 500."""
    resp = client.get(f"/fhir/Patient?{name}={value}", headers=LOCAL_AUTH)
    assert resp.status_code == 400, resp.text
    assert resp.json()["issue"][0]["details"]["coding"][0]["code"] == "inbound.bad-search"
