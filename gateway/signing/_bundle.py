"""Signed Bundles: what each signature covers, signing, co-signing.

Each signature is a ``Provenance`` entry (profile ``signature-provenance``: target = the
Bundle's other resources, agent = the signer, ``signature`` = the JWS) appended to the
Bundle, and the latest one is also copied to ``Bundle.signature``.

Signature k (the k-th signature Provenance in entry order) covers the RFC 8785 canonical
JSON of the Bundle with:

* ``Bundle.signature`` removed (always: FHIR R4 signatures.html);
* for ``Bundle.type = document`` also the root ``id`` and ``meta`` removed (R4's
  ``http://hl7.org/fhir/canonicalization/json#document``: a server may reassign them);
* the signature Provenance entries k+1, k+2, ... removed (signatures added later);
* in its own Provenance, ``signature[0].data`` removed (the JWS itself) — the rest of
  that Provenance (target, agent, recorded, signature type, when, who) is covered.

So a co-signer's signature covers the content and every earlier signature, and an
earlier signature stays valid when a later one is added: verification lists them in
order, each with its role (docs/signing.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from base64 import b64encode
from collections.abc import Container
from typing import Any

import orjson

from ._errors import SigningError
from ._jcs import canonicalize
from ._jws import SIGNATURE_TYPE_SYSTEM, commitment, format_time, sign_detached
from ._pki import Signer

__all__ = [
    "PROFILE",
    "sign_bundle",
    "sign_record_bundle",
    "signature_entries",
    "signed_content",
]

PROFILE = "https://fhir-gateway.example.org/StructureDefinition/signature-provenance"
JOSE = "application/jose"
_AGENT_TYPES = {
    "author": "author",
    "coauthor": "author",
    "verification": "verifier",
    "validation": "verifier",
    "review": "verifier",
    "transcriptionist": "enterer",
}


def _is_signature(entry: Any) -> bool:
    resource = entry.get("resource") if isinstance(entry, dict) else None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Provenance":
        return False
    meta = resource.get("meta")
    return isinstance(meta, dict) and PROFILE in (meta.get("profile") or ())


def signature_entries(bundle: dict[str, Any]) -> list[int]:
    """Positions in ``Bundle.entry`` of the signature Provenances, in signing order."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    return [n for n, e in enumerate(entries) if _is_signature(e)]


def signed_content(bundle: dict[str, Any], k: int | None) -> bytes:
    """The canonical bytes signature ``k`` (1-based; None: a lone ``Bundle.signature``
    without Provenance) covers. Shallow copies only: the Bundle is not changed."""
    top = {key: v for key, v in bundle.items() if key != "signature"}
    if bundle.get("type") == "document":
        top.pop("id", None)
        top.pop("meta", None)
    if k is not None:
        positions = signature_entries(bundle)
        own = positions[k - 1]
        later = set(positions[k:])
        entries = []
        for n, entry in enumerate(bundle["entry"]):
            if n in later:
                continue
            if n == own:
                entry = _without_data(entry)
            entries.append(entry)
        top["entry"] = entries
    return canonicalize(top)


def _without_data(entry: dict[str, Any]) -> dict[str, Any]:
    resource = dict(entry["resource"])
    signatures = list(resource.get("signature") or [])
    if not signatures or not isinstance(signatures[0], dict):
        raise SigningError("malformed", "a signature Provenance without a signature")
    signatures[0] = {key: v for key, v in signatures[0].items() if key != "data"}
    resource["signature"] = signatures
    return {**entry, "resource": resource}


def _who(bundle: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """The signer's reference: the Bundle's own PractitionerRole or Organization entry
    when one has the certificate's identifier, else a logical reference."""
    ident = signer.who.get("identifier", {})
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or resource.get("resourceType") != signer.who["type"]:
            continue
        for own in resource.get("identifier") or ():
            same = own.get("system") == ident.get("system") and own.get("value") == ident.get(
                "value"
            )
            if same and entry.get("fullUrl"):
                return {
                    "reference": entry["fullUrl"],
                    "type": signer.who["type"],
                    "display": signer.name,
                }
    return dict(signer.who)


def provenance_id(bundle: dict[str, Any], kid: str, role: str, index: int) -> str:
    """The uuid5 of signature ``index`` (0-based) by ``kid`` in ``role`` over the Bundle:
    named by the Bundle's identifier as the other resources are by theirs (a Bundle
    without one: by its canonical content), never by the signing time."""
    ident = bundle.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        named = f"{ident.get('system') or ''}|{ident['value']}"
    else:
        content = {key: v for key, v in bundle.items() if key != "signature"}
        named = "sha256:" + hashlib.sha256(canonicalize(content)).hexdigest()
    key = f"signature|{named}|{kid}|{role}|{index}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def _targets(
    bundle: dict[str, Any], entries: list[Any], existing: Container[int]
) -> list[dict[str, Any]]:
    """What the signature covers, for ``Provenance.target`` (1..*): the entries' fullUrls;
    entries without one (a batch) by their ``Type/id``; none of either: the Bundle itself,
    by its identifier (or a display) — never an empty list, which R4 refuses."""
    mine = [e for n, e in enumerate(entries) if isinstance(e, dict) and n not in existing]
    targets = [{"reference": e["fullUrl"]} for e in mine if e.get("fullUrl")]
    if targets:
        return targets
    for e in mine:
        res = e.get("resource")
        if isinstance(res, dict) and res.get("resourceType") and res.get("id"):
            targets.append({"reference": f"{res['resourceType']}/{res['id']}"})
    if targets:
        return targets
    ident = bundle.get("identifier")
    if isinstance(ident, dict) and ident.get("value"):
        return [{"type": "Bundle", "identifier": ident}]
    return [{"type": "Bundle", "display": "the Bundle that holds this signature"}]


def sign_bundle(
    bundle: dict[str, Any],
    signer: Signer,
    role: str = "author",
    when: dt.datetime | None = None,
) -> dict[str, Any]:
    """A copy of ``bundle`` with one more signature (the first, or a co-signature)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise SigningError("bad-input", "only a FHIR Bundle can be signed as JSON")
    oid, desc = commitment(role)
    when = (when or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    entries = list(bundle.get("entry") or [])
    existing = signature_entries(bundle)
    if bundle.get("signature") and not existing:
        raise SigningError(
            "bad-input",
            "the Bundle has a Bundle.signature made without a signature Provenance; "
            "co-signing it would drop that signature",
        )
    who = _who(bundle, signer)
    targets = _targets(bundle, entries, existing)
    signature: dict[str, Any] = {
        "type": [{"system": SIGNATURE_TYPE_SYSTEM, "code": oid, "display": desc}],
        "when": format_time(when),
        "who": who,
        "targetFormat": "application/fhir+json",
        "sigFormat": JOSE,
    }
    agent_type = _AGENT_TYPES.get(role, "attester")
    provenance = {
        "resourceType": "Provenance",
        "meta": {"profile": [PROFILE]},
        "target": targets,
        "recorded": format_time(when),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": agent_type,
                        }
                    ]
                },
                "who": who,
            }
        ],
        "signature": [signature],
    }
    rid = provenance_id(bundle, signer.kid, role, len(existing))
    entry: dict[str, Any] = {"fullUrl": f"urn:uuid:{rid}", "resource": provenance}
    if bundle.get("type") in ("transaction", "batch"):
        # Provenance has no identifier to create it on condition: an update of its
        # deterministic id instead, so a resend (or a re-signing of the same Bundle)
        # leaves one Provenance at the partner, never two (docs/partners.md).
        provenance["id"] = rid
        entry["request"] = {"method": "PUT", "url": f"Provenance/{rid}"}
    out = {**bundle, "entry": [*entries, entry]}
    out.pop("signature", None)
    payload = signed_content(out, len(existing) + 1)
    jws = sign_detached(payload, signer, role, when)
    signature["data"] = b64encode(jws.encode("ascii")).decode("ascii")
    out["signature"] = dict(signature)
    return out


def sign_record_bundle(
    bundle_json: bytes,
    signer: Signer,
    role: str = "author",
    when: dt.datetime | None = None,
) -> bytes:
    """The outbound stage's call: a converted Bundle's bytes in, the signed Bundle's
    bytes out (a co-signature when it is signed already). The pipeline picks ``signer``
    with :func:`gateway.signing.signer_for` (per sender and record type)."""
    try:
        bundle = orjson.loads(bundle_json)
    except orjson.JSONDecodeError:
        raise SigningError("bad-input", "the Bundle to sign is not JSON") from None
    return orjson.dumps(sign_bundle(bundle, signer, role, when))
