"""Record what the policy stage decides and lets leave for every golden and example
Bundle on each decision path (allow, allow-with-changes, hold, deny), as hashes of the
canonical JSON (sorted keys: equal as parsed JSON), in ``equivalence.json`` beside this
file. test_equivalence.py checks the stage against it, so that a faster stage is shown
to give the same decisions and the same Bundles as the one recorded.

    .venv/bin/python tests/policy/make_equivalence.py

First recorded at commit aaf6d1c (the stage before the speed work of issue 12: its own
parse, a full serialisation of what leaves). Rerun it only when the inputs or the
policy's behaviour change on purpose, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("equivalence.json")
KEY = bytes(range(32))
NOW = datetime(2026, 6, 18, 8, 0)
# (path, sender, recipient, purpose, consent): the decision paths.
PATHS = [
    ("allow-with-changes", "NSCH", "HKPMC", "referral", True),  # mainland → Hong Kong
    ("allow-with-changes", "HKPMC", "NSCH", "referral", True),  # Hong Kong → mainland
    ("allow", "NJMU2", "LAX2", "referral", False),  # inside the mainland: nothing removed
    ("hold", "NSCH", "HKPMC", "referral", False),  # no consent on file
    ("deny", "NSGP", "HKPMC", "referral", True),  # the agreement expired
    ("deny", "LAX2", "HKPMC", None, True),  # national contract: not for referrals
]
# A genomic test code (prohibited.yaml) in a copy of each Bundle: denied on the way out
# of the mainland, allowed into it.
GENOMIC = {"system": "http://loinc.org", "code": "51969-4"}


def inputs() -> Iterator[tuple[str, bytes]]:
    """Every golden and example Bundle, as the converter serialised it."""
    files = sorted(REPO.glob("tests/golden/*/*.expected.json"))
    files += sorted(REPO.glob("examples/*/bundles/*.json"))
    for path in files:
        name = str(path.relative_to(REPO))
        data = path.read_bytes()
        parsed = orjson.loads(data)
        if isinstance(parsed, list):  # a batch's output: its Bundles
            for n, item in enumerate(parsed):
                if item.get("resourceType") == "Bundle":
                    yield f"{name}[{n}]", dump(item)
        else:
            yield name, data


def dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def with_genomic(data: bytes) -> bytes:
    parsed = orjson.loads(data)
    for entry in parsed["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] in ("ServiceRequest", "DiagnosticReport", "ImagingStudy"):
            resource.setdefault("code", {}).setdefault("coding", []).append(dict(GENOMIC))
            break
    else:
        parsed["entry"][-1]["resource"].setdefault("meta", {})["tag"] = [dict(GENOMIC)]
    return dump(parsed)


def with_quotes(data: bytes, in_patient: bool = True) -> bytes | None:
    """A copy whose other resources quote the Patient's values the way people write them
    (spaced, hyphenated, in a narrative, a note, a conditional reference, HTML, text and
    PDF attachments): pass 2 of the minimisation then has work everywhere.
    ``in_patient``: the Patient's own narrative quotes them too (else the Patient is
    the same as in ``data``: what is kept per patient must not hide the rest)."""
    import base64

    parsed = orjson.loads(data)
    patients = [
        e["resource"] for e in parsed["entry"] if e["resource"]["resourceType"] == "Patient"
    ]
    if not patients:
        return None
    quotes: list[str] = []
    reference = None
    for patient in patients:
        for ident in patient.get("identifier") or []:
            value = str(ident.get("value") or "")
            quotes += [value, " ".join(value[i : i + 4] for i in range(0, len(value), 4))]
            reference = reference or f"Patient?identifier={ident.get('system')}|{value}"
        for address in patient.get("address") or []:
            quotes += [*address.get("line", []), address.get("text", "")]
        for telecom in patient.get("telecom") or []:
            value = str(telecom.get("value") or "")
            quotes += [value, "-".join(value[i : i + 3] for i in range(0, len(value), 3))]
    said = "；".join(q for q in quotes if q)
    html = f"<html><body><p>{said}</p><p>A &amp; B</p></body></html>".encode()
    if in_patient:
        patients[0]["text"] = {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{said}</div>',
        }
    for entry in parsed["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "Patient":
            if in_patient:  # an empty meta (then labelled like any other)
                resource["meta"] = {}
            resource["text"] = {
                "status": "additional",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{said}</p></div>',
            }
            break
    parsed["entry"].append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000e1",
            "resource": {
                "resourceType": "DocumentReference",
                "meta": {"security": [{"system": "urn:example:label", "code": "R"}]},
                "status": "current",
                "description": f"患者 {said}",
                "subject": {"reference": reference or "Patient/x"},
                "content": [
                    {
                        "attachment": {
                            "contentType": "text/html; charset=utf-8",
                            "data": base64.b64encode(html).decode(),
                            "size": len(html),
                        }
                    },
                    {
                        "attachment": {
                            "contentType": "text/plain",
                            "data": base64.b64encode(said.encode()).decode(),
                            "title": said[:40],
                        }
                    },
                    {
                        "attachment": {
                            "contentType": "application/pdf",
                            "data": base64.b64encode(b"%PDF-1.4 " + said.encode()).decode(),
                        }
                    },
                    {
                        "attachment": {
                            "contentType": "text/plain",
                            "data": base64.b64encode(b"nothing to hide").decode(),
                        }
                    },
                ],
            },
            "request": {"method": "POST", "url": "DocumentReference"},
        }
    )
    return dump(parsed)


def canonical(value: Any) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def cases() -> Iterator[tuple[str, bytes, tuple[str, str, str, str | None, bool]]]:
    for name, data in inputs():
        for path in PATHS:
            yield name, data, path
        for variant, in_patient in (("+quoted", True), ("+quoted-elsewhere", False)):
            quoted = with_quotes(data, in_patient)
            if quoted is not None:
                for path in PATHS[:3]:
                    yield f"{name}{variant}", quoted, path
        genomic = with_genomic(data)
        yield f"{name}+genomic", genomic, ("deny", "NSCH", "HKPMC", "referral", True)
        yield f"{name}+genomic", genomic, ("allow-with-changes", "HKPMC", "NSCH", "referral", True)


def key(name: str, path: tuple[str, str, str, str | None, bool]) -> str:
    _, sender, recipient, purpose, consent = path
    return f"{name} {sender}->{recipient} {purpose or '-'} consent={consent}"


def consents_for(policy: Any, data: bytes, recipient: str) -> Any:
    """A consent for every identifier of every Patient, to the recipient, for referrals."""
    from gateway.policy import MemoryConsents, parse_consent
    from tests.policy.conftest import OIDS, consent

    records = []
    for entry in orjson.loads(data)["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "Patient":
            continue
        for n, ident in enumerate(resource.get("identifier") or []):
            if ident.get("system") and ident.get("value") and recipient in OIDS:
                body = consent(
                    (ident["system"], ident["value"]), recipient, ident=f"eq-{n}-{len(records)}"
                )
                records.append(parse_consent(body, policy.network, policy.data.purposes))
    return MemoryConsents(records)


def decide(
    policy: Any, data: bytes, path: tuple[str, str, str, str | None, bool], form: str
) -> Any:
    """One decision; ``form``: the input as bytes, as the converter's dict with its JSON
    (``Record.mapped``, ``Record.bundle_json``), or as a dict alone."""
    from gateway.policy import MemoryConsents, MemoryCounters

    _, sender, recipient, purpose, with_consent = path
    consents = consents_for(policy, data, recipient) if with_consent else MemoryConsents()
    common: dict[str, Any] = {"consents": consents, "counters": MemoryCounters(), "now": NOW}
    if form == "bytes":
        return policy.decide(data, sender, recipient, purpose, **common)
    parsed = orjson.loads(data)
    text = data if form == "dict+text" else None
    return policy.decide(parsed, sender, recipient, purpose, text=text, **common)


def record(decision: Any) -> dict[str, Any]:
    out = decision.to_json()
    out.pop("consents", None)  # added to the decision's JSON after the recording
    return {
        "outcome": decision.outcome,
        "decision": canonical(out),
        "patients": canonical(decision.patients),
        "count": canonical(decision.count),
        "bundle": None
        if decision.bundle_json is None
        else canonical(orjson.loads(decision.bundle_json)),
    }


def main() -> None:
    sys.path.insert(0, str(REPO))
    import tempfile

    from gateway import Settings
    from gateway.policy import Policy

    settings = Settings.load(home=Path(tempfile.mkdtemp(prefix="equivalence-")), env={})
    policy = Policy(settings, key=KEY)
    table = {}
    for name, data, path in cases():
        found = record(decide(policy, data, path, "bytes"))
        table[key(name, path)] = found
        print(f"{found['outcome']:20} {key(name, path)}")
    OUT.write_text(
        orjson.dumps(table, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
    )


if __name__ == "__main__":
    main()
