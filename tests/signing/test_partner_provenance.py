"""The signature Provenance at the real partner server: it is written by its
deterministic id (``PUT Provenance/<uuid5>``, Provenance has no identifier to create it
on condition), so a resend of the signed Bundle, or the same Bundle signed again later,
leaves one Provenance per signature there, never two."""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson

from gateway.signing import Signer, sign_bundle
from tests.outputs import GOLDEN
from tests.partner.conftest import PartnerServer, partner  # noqa: F401  (the real server)

from .conftest import WHEN

ORDER = GOLDEN / "hl7v2" / "omi_o23.expected.json"


def _order() -> dict[str, Any]:
    bundle: dict[str, Any] = orjson.loads(ORDER.read_bytes())
    return bundle


def _accepted(server: PartnerServer, bundle: dict[str, Any]) -> None:
    answer = server.post(bundle)
    assert answer.status_code == 200, answer.text
    statuses = [e["response"]["status"][:1] for e in answer.json()["entry"]]
    assert set(statuses) == {"2"}, answer.text


def test_a_resent_signed_bundle_leaves_one_provenance(
    partner: PartnerServer,  # noqa: F811
    lax2: Signer,
) -> None:
    partner.reset()
    signed = sign_bundle(_order(), lax2, "author", WHEN)
    _accepted(partner, signed)
    _accepted(partner, signed)  # a resend: the answer was lost, the row sent again
    assert len(partner.search("Provenance")) == 1
    later = sign_bundle(_order(), lax2, "author", WHEN + dt.timedelta(hours=1))
    _accepted(partner, later)  # the message reprocessed: signed again, sent again
    [held] = partner.search("Provenance")
    assert held["recorded"] == later["entry"][-1]["resource"]["recorded"]
    assert len(partner.search("ServiceRequest")) == 1


def test_a_cosignature_is_a_second_provenance_each_once(
    partner: PartnerServer,  # noqa: F811
    lax2: Signer,
    xu_jing: Signer,
) -> None:
    partner.reset()
    first = sign_bundle(_order(), lax2, "author", WHEN)
    both = sign_bundle(first, xu_jing, "verification", WHEN + dt.timedelta(seconds=30))
    for _ in range(2):
        _accepted(partner, both)
    assert len(partner.search("Provenance")) == 2


def test_the_provenance_entry_is_an_update_of_an_id_the_signing_time_does_not_change(
    lax2: Signer,
) -> None:
    one = sign_bundle(_order(), lax2, "author", WHEN)["entry"][-1]
    two = sign_bundle(_order(), lax2, "author", WHEN + dt.timedelta(days=1))["entry"][-1]
    rid = one["resource"]["id"]
    assert one["request"] == {"method": "PUT", "url": f"Provenance/{rid}"}
    assert one["fullUrl"] == f"urn:uuid:{rid}" and two["resource"]["id"] == rid
    other = _order()
    other["identifier"] = {**other["identifier"], "value": "another-message"}
    assert sign_bundle(other, lax2, "author", WHEN)["entry"][-1]["resource"]["id"] != rid
