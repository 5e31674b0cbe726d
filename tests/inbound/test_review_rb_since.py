"""A conditional read's date must be one this server could have answered: a date later
than its clock came from no ``Last-Modified`` it sent (RFC 9110 8.8.2.1; RFC 2616
14.25: "a date which is later than the server's current time is invalid") but from a
client's own clock, ahead: every version written until that date was then answered
304 Not Modified to the client holding an earlier one. And an ``If-Modified-Since`` of
two dates is ignored (RFC 9110 13.1.3: more than one member); its first was read."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from tests.api.test_app import Client

from .conftest import NSCH_TOKEN, partner
from .test_conditional_read import _batch, _get, _stored


def test_a_date_later_than_the_servers_clock_is_ignored(
    client: Client, signed_referral: bytes
) -> None:
    ref, resource = _stored(client, signed_referral)
    ahead = datetime.now(UTC) + timedelta(minutes=10)  # the partner's clock, ahead
    header = _get(client, ref, If_Modified_Since=format_datetime(ahead, usegmt=True))
    assert header.status_code == 200 and header.json() == resource
    stamp = ahead.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    batch = _batch({"url": ref, "ifModifiedSince": stamp})
    answered = client.post("/fhir", content=batch, headers=partner(NSCH_TOKEN)).json()
    assert answered["entry"][0]["response"]["status"] == "200 OK"
    assert answered["entry"][0]["resource"] == resource


def test_an_if_modified_since_of_two_dates_is_ignored(
    client: Client, signed_referral: bytes
) -> None:
    ref, resource = _stored(client, signed_referral)
    written = datetime.fromisoformat(resource["meta"]["lastUpdated"])
    while datetime.now(UTC) < written + timedelta(seconds=1):  # a whole second after it
        time.sleep(0.05)
    now = format_datetime(datetime.now(UTC), usegmt=True)
    assert _get(client, ref, If_Modified_Since=now).status_code == 304  # alone: a date
    old = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    for both in (f"{now}, {old}", f"{old}, {now}"):
        answered = _get(client, ref, If_Modified_Since=both)
        assert answered.status_code == 200 and answered.json() == resource, both
