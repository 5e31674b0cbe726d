"""Done when: an independent JOSE library (joserfc) and an independent RFC 8785
implementation (Trail of Bits' rfc8785 and the reference in test_jcs) verify the
gateway's signatures, computed from the specification's rules, not from our helpers."""

from __future__ import annotations

import datetime as dt
import json
from base64 import b64decode, urlsafe_b64decode
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from cryptography import x509
from joserfc import jws
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter

from gateway.signing import PROFILE, Signer, make_demo_pki, sign_bundle

from .conftest import WHEN
from .test_jcs import reference


def _is_list(value: Any) -> None:
    if not isinstance(value, list):
        raise ValueError("srCms must be a list")


# joserfc refuses crit headers it does not know: it is told that sigT and srCms exist.
REGISTRY = JWSRegistry(
    header_registry={
        "sigT": HeaderParameter("JAdES claimed signing time", "str"),
        "srCms": HeaderParameter("JAdES signer commitments", _is_list),
    },
    algorithms=["ES256", "ES384", "EdDSA", "PS256"],
)
REGISTRY.max_header_length = 16384  # x5c carries the chain: more than joserfc's 512 bytes


def _header(token: str) -> dict[str, Any]:
    part = token.split(".")[0]
    parsed: dict[str, Any] = json.loads(urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return parsed


def _independent_payload(bundle: dict[str, Any], k: int, canonical: Any) -> bytes:
    """What signature k covers, per docs/signing.md, built without gateway code."""
    top = {key: v for key, v in bundle.items() if key != "signature"}
    if bundle.get("type") == "document":
        top.pop("id", None)
        top.pop("meta", None)
    entries, seen = [], 0
    for entry in bundle["entry"]:
        resource = entry["resource"]
        is_sig = resource["resourceType"] == "Provenance" and PROFILE in resource.get(
            "meta", {}
        ).get("profile", [])
        if is_sig:
            seen += 1
            if seen > k:
                continue
            if seen == k:
                sig = {key: v for key, v in resource["signature"][0].items() if key != "data"}
                entry = {**entry, "resource": {**resource, "signature": [sig]}}
        entries.append(entry)
    top["entry"] = entries
    return canonical(top)


def _key(cert: x509.Certificate) -> Any:
    public = cert.public_key()
    for kind in (ECKey, OKPKey, RSAKey):
        try:
            return kind.import_key(public)  # type: ignore[arg-type]
        except Exception:
            continue
    raise AssertionError("no joserfc key type")


def _jws_of(bundle: dict[str, Any], k: int) -> str:
    provenances = [
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"
    ]
    return b64decode(provenances[k - 1]["signature"][0]["data"]).decode()


@pytest.mark.parametrize(
    "canonical", [rfc8785.dumps, lambda v: reference(v).encode()], ids=["rfc8785", "reference"]
)
def test_joserfc_verifies_both_signatures_of_the_cosigned_report(
    cosigned: dict[str, Any], canonical: Any
) -> None:
    for k in (1, 2):
        token = _jws_of(cosigned, k)
        header = _header(token)
        leaf = x509.load_der_x509_certificate(b64decode(header["x5c"][0]))
        payload = _independent_payload(cosigned, k, canonical)
        verified = jws.deserialize_compact(token, _key(leaf), payload=payload, registry=REGISTRY)
        assert verified.protected["crit"] == ["b64", "sigT", "srCms"]
        assert verified.protected["b64"] is False  # RFC 7797 unencoded detached payload
        assert verified.payload == payload
    assert cosigned["signature"] == cosigned["entry"][-1]["resource"]["signature"][0]


# RFC 9864 deprecates "EdDSA" for the fully-specified "Ed25519"; JAdES and IHE DSG
# still name EdDSA, which the gateway writes (and it reads both).
@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
@pytest.mark.parametrize("alg", ["ES256", "ES384", "EdDSA", "PS256"])
def test_joserfc_verifies_every_algorithm(alg: str, tmp_path: Path, golden: dict[str, Any]) -> None:
    from gateway.datafiles import data_dir

    make_demo_pki(data_dir("seeds") / "network.yaml", tmp_path, alg)
    signer = Signer.load(tmp_path / "nsch" / "key.pem", tmp_path / "nsch" / "cert.pem")
    signed = sign_bundle(golden, signer, "author", WHEN)
    token = b64decode(signed["signature"]["data"]).decode()
    payload = _independent_payload(signed, 1, rfc8785.dumps)
    verified = jws.deserialize_compact(
        token, _key(signer.chain[0]), payload=payload, registry=REGISTRY
    )
    assert verified.protected["alg"] == alg
    assert verified.protected["sigT"] == WHEN.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert verified.protected["srCms"][0]["commId"]["id"] == "urn:oid:1.2.840.10065.1.12.1.1"


def test_joserfc_refuses_a_changed_payload(cosigned: dict[str, Any]) -> None:
    token = _jws_of(cosigned, 1)
    payload = _independent_payload(cosigned, 1, rfc8785.dumps).replace(b"CT", b"MR", 1)
    header = _header(token)
    leaf = x509.load_der_x509_certificate(b64decode(header["x5c"][0]))
    with pytest.raises(jws.BadSignatureError):
        jws.deserialize_compact(token, _key(leaf), payload=payload, registry=REGISTRY)
