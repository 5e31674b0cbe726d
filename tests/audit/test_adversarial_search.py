"""Adversarial review of `GET /fhir/AuditEvent`'s parameters: numbers that pass
`str.isdigit` but are not ASCII digits, or beyond a 64-bit index, were a crash (500)
where a named 400 (`audit.bad-search`) is due."""

from __future__ import annotations

import pytest

from gateway.audit import AuditLog
from gateway.audit._log import AuditError
from gateway.audit._search import parse_query, search_events

from .conftest import transfer_events


@pytest.mark.parametrize(
    ("name", "value"),
    [("_count", "²"), ("_count", "١٢"), ("_after", "²"), ("_after", "١٢"), ("_after", "9" * 30)],
)
def test_a_strange_number_is_a_named_bad_search(log: AuditLog, name: str, value: str) -> None:
    log.record_many(transfer_events(3))
    with pytest.raises(AuditError) as caught:
        search_events(log, parse_query([(name, value)]))
    assert caught.value.code == "audit.bad-search" and name in caught.value.issue.message


def test_plain_numbers_still_page(log: AuditLog) -> None:
    log.record_many(transfer_events(5))
    page, cursor = search_events(log, parse_query([("_count", "2"), ("_after", "0")]))
    assert [e.index for e, _ in page] == [1, 2] and cursor == 2
    page, cursor = search_events(log, parse_query([("_count", "9" * 30)]))  # capped
    assert len(page) == 5 and cursor is None
