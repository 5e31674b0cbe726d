"""After minimisation no original value of the configured kinds (resident ID / HKID,
street address, postal code, phone) survives anywhere in what leaves: every string of
the Bundle is searched, base64 attachments decoded (HTML and text read, PDF text
extracted with pypdf). Postal codes leave the Patient's address but are not searched for
in text: like the district and city they name an area (docs/policy.md)."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import orjson
import pypdf
from fhir.resources.R4B.bundle import Bundle
from fpdf import FPDF

from gateway.policy import LEGAL_BASIS_SYSTEM, MemoryConsents, Policy, parse_consent

from .conftest import HKID, NOW, RESIDENT_ID, consent

ID = "341122196604200135"
PHONE = "+8613900000001"
LINE = "汊河镇滨河路1号"
TEXT = "安徽省滁州市来安县汊河镇滨河路1号"
POSTAL = "239200"


def _pdf(*lines: str) -> bytes:
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    for line in lines:
        pdf.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _report_bundle(bundle: bytes) -> dict[str, Any]:
    """The Lai'an referral with everything a hospital might add: a narrative, a
    DiagnosticReport quoting the values in its conclusion, an HTML, a text and a PDF
    rendering, a DocumentReference with a PDF, a conditional reference by resident ID."""
    parsed = orjson.loads(bundle)
    patient = next(e for e in parsed["entry"] if e["resource"]["resourceType"] == "Patient")
    patient["resource"]["text"] = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">王伟，身份证 341122 19660420 0135，'
        f"住 {TEXT}（邮编 {POSTAL}），手机 +86-139-0000-0001</div>",
    }
    html = (
        "<html><body><h1>头颅CT报告</h1>"
        f"<p>患者：王伟 身份证号：{ID} 电话：139 0000 0001</p>"
        f"<p>地址：{LINE}</p></body></html>"
    ).encode()
    text = f"患者 王伟 {ID} {PHONE} {TEXT}".encode()
    pdf = _pdf(f"Resident ID {ID}", "Phone 139-0000-0001", f"Postal code {POSTAL}")
    parsed["entry"] += [
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000d1",
            "resource": {
                "resourceType": "DiagnosticReport",
                "status": "final",
                "code": {"text": "头颅CT平扫"},
                "subject": {"reference": f"Patient?identifier={RESIDENT_ID}|{ID}"},
                "conclusion": "左侧基底节区陈旧性腔隙性梗死灶。"
                f"如有疑问请致电患者 13900000001（{LINE}）。",
                "presentedForm": [
                    {
                        "contentType": "text/html; charset=utf-8",
                        "language": "zh-Hans",
                        "data": _b64(html),
                        "size": len(html),
                    },
                    {"contentType": "application/pdf", "language": "zh-Hans", "data": _b64(pdf)},
                    {"contentType": "text/plain", "data": _b64(text)},
                ],
            },
            "request": {"method": "POST", "url": "DiagnosticReport"},
        },
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000d2",
            "resource": {
                "resourceType": "DocumentReference",
                "status": "current",
                "content": [
                    {"attachment": {"contentType": "application/pdf", "data": _b64(pdf)}},
                    {"attachment": {"contentType": "text/html", "data": _b64(html)}},
                ],
            },
            "request": {"method": "POST", "url": "DocumentReference"},
        },
    ]
    return parsed


def _strings(node: Any, found: list[str], content_type: str | None = None) -> None:
    """Every string in the Bundle; attachments decoded (PDF: its extracted text)."""
    if isinstance(node, dict):
        if "data" in node and "contentType" in node:
            data = base64.b64decode(node["data"])
            if node["contentType"].startswith("application/pdf"):
                found.append(
                    "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(data)).pages)
                )
            else:
                found.append(data.decode("utf-8"))
        for key, value in node.items():
            found.append(key)
            _strings(value, found)
    elif isinstance(node, list):
        for item in node:
            _strings(item, found)
    elif isinstance(node, str):
        found.append(node)


def _leaks(bundle: dict[str, Any], originals: list[str]) -> list[str]:
    strings: list[str] = []
    _strings(bundle, strings)
    leaks = []
    for text in strings:
        squeezed = re.sub(r"[\s\-()+]", "", text)
        for value in originals:
            compact = re.sub(r"[\s\-()+]", "", value)
            if value in text or (compact.isalnum() and compact.upper() in squeezed.upper()):
                leaks.append(value)
    return leaks


def test_no_configured_value_survives_anywhere(policy: Policy, bundles: dict[str, bytes]) -> None:
    source = _report_bundle(bundles["ref_i12_lax2_to_njmu2"])
    originals = [ID, PHONE, "13900000001", LINE, TEXT]
    assert set(_leaks(source, originals)) == set(originals)  # the search finds them all
    consents = MemoryConsents(
        [
            parse_consent(
                consent((RESIDENT_ID, ID), "HKPMC", ("second-opinion",)),
                policy.network,
                policy.data.purposes,
            )
        ]
    )
    decision = policy.decide(source, "LAX2", "HKPMC", "second-opinion", consents=consents, now=NOW)
    assert decision.outcome == "allow-with-changes", [r.reason["en"] for r in decision.results]
    out = decision.bundle
    assert out is not None
    assert _leaks(out, originals) == []
    # What stays: the city, the pseudonym in place of the ID, the HTML forms rewritten.
    patient = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    assert patient["address"] == [
        {"use": "home", "city": "滁州市", "state": "安徽省", "country": "CHN"}
    ]
    assert "telecom" not in patient
    alias = next(i for i in patient["identifier"] if i["system"].endswith("/pseudonym/lax2"))
    assert alias["value"].startswith("PSN-")
    report = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert [f["contentType"] for f in report["presentedForm"]] == [
        "text/html; charset=utf-8",
        "text/plain",
    ]
    html = base64.b64decode(report["presentedForm"][0]["data"]).decode()
    assert alias["value"] in html and "滁州市" in html
    assert report["presentedForm"][0]["size"] == len(html.encode())
    assert report["subject"]["reference"].endswith(f"/pseudonym/lax2|{alias['value']}")
    # The changes say where, never what.
    paths = {c.path: c.action for c in decision.changes}
    n = next(
        i
        for i, e in enumerate(source["entry"])
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    assert paths[f"Bundle.entry[{n}].resource.presentedForm[1]"] == "attachment-dropped"
    assert paths[f"Bundle.entry[{n + 1}].resource.content[0].attachment"] == "attachment-dropped"
    assert "attachment-rewritten" in paths.values() and "text-rewritten" in paths.values()
    dumped = orjson.dumps([c.to_json() for c in decision.changes]).decode()
    assert _leaks({"changes": dumped}, originals) == []


def test_hkid_in_any_spelling_is_replaced(policy: Policy, bundles: dict[str, bytes]) -> None:
    source = orjson.loads(bundles["ref_i12_nsch_to_hkpmc"])
    request = next(
        e["resource"] for e in source["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    request["note"].append(
        {"text": "HKID K583726(A)；香港地址 協和街88號錦東大廈12樓B室；電話 +852 0000 0002"}
    )
    consents = MemoryConsents(
        [parse_consent(consent((HKID, "K583726A"), "HKPMC"), policy.network, policy.data.purposes)]
    )
    decision = policy.decide(source, "NSCH", "HKPMC", consents=consents, now=NOW)
    assert decision.bundle is not None
    originals = [
        "K583726A",
        "協和街88號錦東大廈12樓B室",
        "+85200000002",
        "+8613900000002",
        "海景路66号3栋1502房",
    ]
    assert _leaks(decision.bundle, originals) == []


def test_what_leaves_is_labelled_and_valid(policy: Policy, bundles: dict[str, bytes]) -> None:
    consents = MemoryConsents(
        [parse_consent(consent((HKID, "K583726A"), "HKPMC"), policy.network, policy.data.purposes)]
    )
    decision = policy.decide(
        bundles["ref_i12_nsch_to_hkpmc"], "NSCH", "HKPMC", consents=consents, now=NOW
    )
    out = decision.bundle
    assert out is not None
    Bundle.model_validate(out)  # the R4 structure still holds, Provenance included
    for entry in out["entry"]:
        codes = {(s["system"], s["code"]) for s in entry["resource"]["meta"]["security"]}
        assert (LEGAL_BASIS_SYSTEM, "gba-standard-contract") in codes
        assert ("http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT") in codes
    provenance = out["entry"][-1]["resource"]
    assert provenance["resourceType"] == "Provenance"
    assert provenance["policy"] == [
        "https://fhir-gateway.example.org/agreement/GBA-SC-2024-NSCH-HKPMC",
        f"{LEGAL_BASIS_SYSTEM}#gba-standard-contract",
    ]
    assert len(provenance["target"]) == len(out["entry"]) - 1
    assert out["entry"][-1]["request"]["method"] == "PUT"


def test_probes_contained_in_another_are_searched_once_with_the_same_answers() -> None:
    """A phone's digits with their country code hold its digits without: only the
    shorter is looked for, and the search answers as with every probe."""
    from gateway.policy._minimise import _fewest, _found_upper, _needle, squeezed

    values = ["K583726A", "8613900000002", "13900000002", "13900000002", "A1234567"]
    kept = _fewest(values)
    assert (b"13900000002", None) in kept and (b"8613900000002", None) not in kept
    assert len(kept) == 3  # duplicates and the longer phone gone, the IDs kept
    every = [_needle(v) for v in values]
    for text in (
        b'{"note":"call +86 139-0000-0002"}',
        b'{"note":"id k583726a"}',
        b'{"note":"id K 583726 (A)"}',
        b'{"note":"A 123456 (7)"}',
        b'{"note":"8613900000003, K583726B"}',
        b'{"note":"nothing"}',
    ):
        data = squeezed(text)
        assert _found_upper(kept, data, text) == _found_upper(every, data, text), text
