"""Searching the audit log (gateway/audit/_search.py, behind GET /fhir/AuditEvent): each
parameter against the events a naive filter over the whole log selects, paging by
cursor, and refusals naming the parameter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gateway.audit import AuditLog, Subject, events
from gateway.audit._events import KIND_SYSTEM, LIFECYCLE
from gateway.audit._log import AuditError
from gateway.audit._search import parse_query, read_event, search_events

from .conftest import PATIENTS, START, transfer_events

Event = dict[str, Any]


def ids(log: AuditLog, params: list[tuple[str, str]]) -> list[str]:
    """Every match, following the cursor page by page (pages of 3)."""
    out: list[str] = []
    cursor: list[tuple[str, str]] = []
    while True:
        page, after = search_events(log, parse_query([*params, ("_count", "3"), *cursor]))
        assert len(page) <= 3
        out += [entry.event_id for entry, _ in page]
        if after is None:
            return out
        cursor = [("_after", str(after))]


def naive(made: list[Event], keep: Callable[[Event], bool]) -> list[str]:
    return [e["id"] for e in made if keep(e)]


def entity_refs(e: Event) -> list[Any]:
    return [x.get("what") for x in e.get("entity") or []]


@pytest.fixture
def made(log: AuditLog) -> list[Event]:
    found = transfer_events(24)
    # a read by an API token of two patients at once: both patients find it
    found.append(
        events.api_read(
            "token-1", "token-1", Subject(PATIENTS[1]), role="auditor",
            patients=[PATIENTS[2]], interaction="search-type", query="GET /messages",
        )
    )  # fmt: skip
    log.record_many(found)
    return found


def test_each_parameter_selects_what_a_naive_filter_selects(
    log: AuditLog, made: list[Event]
) -> None:
    def has_patient(p: str) -> Callable[[Event], bool]:
        return lambda e: (
            {"reference": p}
            in [x.get("what") for x in e.get("entity") or [] if x["role"]["code"] == "1"]
        )

    assert ids(log, [("patient", PATIENTS[0])]) == naive(made, has_patient(PATIENTS[0]))
    bare = PATIENTS[2].removeprefix("Patient/")
    assert ids(log, [("patient", bare)]) == naive(made, has_patient(PATIENTS[2]))
    assert made[-1]["id"] in ids(log, [("patient", PATIENTS[2])])  # its second patient
    either = ids(log, [("patient", f"{PATIENTS[0]},{PATIENTS[1]}")])
    assert either == naive(
        made, lambda e: has_patient(PATIENTS[0])(e) or has_patient(PATIENTS[1])(e)
    )

    assert ids(log, [("entity", "Bundle/bundle-2")]) == naive(
        made, lambda e: {"reference": "Bundle/bundle-2"} in entity_refs(e)
    )
    partner_ids = lambda e: [a["who"]["identifier"]["value"] for a in e["agent"]]  # noqa: E731
    assert ids(log, [("agent", "NJMU2")]) == naive(made, lambda e: "NJMU2" in partner_ids(e))
    facility = "https://fhir-gateway.example.org/sid/hl7-facility|HKPMC"
    assert ids(log, [("agent", facility)]) == naive(made, lambda e: "HKPMC" in partner_ids(e))

    # date: recorded one minute apart from START
    assert ids(log, [("date", "ge2026-06-10T08:10:00Z"), ("date", "le2026-06-10T08:12:00Z")]) == [
        e["id"] for e in made[10:13]
    ]
    assert ids(log, [("date", "lt2026-06-10T08:02:00Z")]) == [e["id"] for e in made[:2]]
    assert ids(log, [("date", "gt2026-06-10T08:22:00Z")]) == [e["id"] for e in made[23:]]
    assert len(ids(log, [("date", "2026-06-10")])) == 24  # the api-read is of today
    assert ids(log, [("date", "le2026-06-09")]) == []

    exports = naive(made, lambda e: e["type"]["code"] == "110106")
    assert exports and ids(log, [("type", "110106")]) == exports
    dcm = "http://dicom.nema.org/resources/ontology/DCM"
    assert ids(log, [("type", f"{dcm}|110106")]) == exports
    assert ids(log, [("type", "http://example.org/other|110106")]) == []
    assert ids(log, [("subtype", f"{KIND_SYSTEM}|delivery")]) == exports
    assert ids(log, [("subtype", f"{LIFECYCLE}|transmit")]) == exports
    assert ids(log, [("subtype", "search-type")]) == [made[-1]["id"]]
    assert ids(log, [("outcome", "0")]) == [e["id"] for e in made]
    assert ids(log, [("outcome", "8")]) == []
    assert ids(log, [("action", "R")]) == naive(made, lambda e: e["action"] == "R")
    assert ids(log, [("_id", made[5]["id"])]) == [made[5]["id"]]
    # several parameters: all must hold
    assert ids(log, [("patient", PATIENTS[0]), ("subtype", f"{KIND_SYSTEM}|delivery")]) == naive(
        made, lambda e: has_patient(PATIENTS[0])(e) and e["id"] in exports
    )


def test_paging_returns_each_event_once_and_the_last_page_has_no_cursor(
    log: AuditLog, made: list[Event]
) -> None:
    assert ids(log, []) == [e["id"] for e in made]
    page, after = search_events(log, parse_query([("_count", str(len(made)))]))
    assert len(page) == len(made) and after is None
    page, after = search_events(log, parse_query([("_count", "5")]))
    assert after == page[-1][0].index == 4
    assert page[0][1] == made[0]  # the event exactly as logged


def test_read_and_refusals(log: AuditLog, made: list[Event]) -> None:
    entry, event = read_event(log, made[3]["id"])
    assert entry.index == 3 and event == made[3]
    with pytest.raises(AuditError) as missing:
        read_event(log, "nope")
    assert missing.value.code == "audit.not-found"
    for name, value in [
        ("name", "x"),
        ("date", "yesterday"),
        ("date", "ne2026-06-10"),
        ("outcome", "3"),
        ("action", "X"),
        ("_count", "-1"),
        ("patient", ""),
    ]:
        with pytest.raises(AuditError) as bad:
            parse_query([(name, value)])
        assert bad.value.code == "audit.bad-search" and bad.value.issue.location == name
        assert "yesterday" not in bad.value.issue.message  # a value is shown by its form


def test_date_search_uses_utc(log: AuditLog) -> None:
    log.record(events.converted(Subject(PATIENTS[0]), when=START))
    assert len(ids(log, [("date", "eq2026-06-10T16:00:00+08:00")])) == 1  # 08:00Z
    assert len(ids(log, [("date", "eq2026-06-10T08:00:00+08:00")])) == 0
    with pytest.raises(AuditError):  # a time needs its zone (FHIR dateTime)
        parse_query([("date", "eq2026-06-10T08:00:00")])
