"""DiagnosticReport Bundles shaped as the ORU/CDA mappings produce them (CONTRACT.md):
the Lai'an CT read by the Nanjing expert (co-branded), and the Nansha CT with the
English report of the Hong Kong radiologist."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway import Settings
from gateway.reports import ReportVariants
from gateway.reports._variants import MAX_TEXT, _strings

TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"
TRANSLATION_OF = "https://fhir-gateway.example.org/StructureDefinition/translation-of"
ABC = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


def _uuid(n: int) -> str:
    return f"urn:uuid:00000000-0000-4000-8000-{n:012d}"


def _entry(n: int, resource: dict[str, Any]) -> dict[str, Any]:
    resource = {"resourceType": resource["resourceType"], "id": _uuid(n)[9:], **resource}
    return {
        "fullUrl": _uuid(n),
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def _org(n: int, oid: str, facility: str, name: str) -> dict[str, Any]:
    return _entry(
        n,
        {
            "resourceType": "Organization",
            "identifier": [
                {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{oid}"},
                {"system": "https://fhir-gateway.example.org/sid/hl7-facility", "value": facility},
            ],
            "name": name,
        },
    )


def _translation(lang: str, text: str) -> dict[str, Any]:
    return {
        "url": TRANSLATION,
        "extension": [{"url": "lang", "valueCode": lang}, {"url": "content", "valueString": text}],
    }


def _report(
    *,
    lang: str,
    base: str,
    report_id: str,
    accession: str,
    exam: list[dict[str, Any]],
    conclusion: str,
    issued: str,
) -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "language": lang,
        "identifier": [
            {"system": f"{base}/sid/report", "value": report_id},
            {
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}
                    ]
                },
                "system": f"{base}/sid/accession",
                "value": accession,
            },
        ],
        "basedOn": [
            {
                "reference": f"ServiceRequest?identifier={base}/sid/accession|{accession}",
                "type": "ServiceRequest",
                "identifier": {"system": f"{base}/sid/accession", "value": accession},
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                        "code": "RAD",
                        "display": "Radiology",
                    }
                ]
            }
        ],
        "code": {
            "coding": [
                {
                    "system": "http://loinc.org",
                    "code": "18748-4",
                    "display": "Diagnostic imaging study",
                },
                *exam,
            ]
        },
        "effectiveDateTime": "2026-06-16T10:20:00+08:00",
        "issued": issued,
        "conclusion": conclusion,
    }


def _findings(n: int, lang: str, text: str, subject: str) -> dict[str, Any]:
    return _entry(
        n,
        {
            "resourceType": "Observation",
            "language": lang,
            "status": "final",
            "code": {
                "coding": [
                    {
                        "system": "http://loinc.org",
                        "code": "59776-5",
                        "display": "Procedure findings Narrative",
                    }
                ]
            },
            "subject": {"reference": subject},
            "valueString": text,
        },
    )


LAIAN_FINDINGS = (
    "右侧基底节区见斑片状低密度影，边界欠清，大小约15mm×12mm。脑室系统未见扩张，中线结构居中。"
)
LAIAN_CONCLUSION = "右侧基底节区腔隙性脑梗死，建议随访复查。"


def laian_bundle() -> dict[str, Any]:
    """来安县第二人民医院 CT, read and signed by 徐静 of 南京医科大学第二附属医院."""
    lax2, njmu2 = "https://fhir.lax2.example.cn", "https://fhir.njmu2.example.cn"
    report = _report(
        lang="zh-Hans",
        base=lax2,
        report_id="RPT20260616001",
        accession="LA2026061600031",
        exam=[
            {
                "system": f"{lax2}/CodeSystem/99LAX2",
                "code": "CT001",
                "display": "头颅CT平扫",
            },
            {
                "system": "http://loinc.org",
                "code": "30799-1",
                "display": "CT Head WO contrast",
                "_display": {
                    "extension": [
                        _translation("zh-CN", "头颅CT平扫"),
                        _translation("zh-HK", "頭顱CT平掃"),
                    ]
                },
            },
        ],
        conclusion=LAIAN_CONCLUSION,
        issued="2026-06-16T15:42:00+08:00",
    )
    report |= {
        "subject": {"reference": _uuid(3)},
        "performer": [{"reference": _uuid(1)}],
        "resultsInterpreter": [{"reference": _uuid(5)}],
        "result": [{"reference": _uuid(6)}],
    }
    entries = [
        _org(1, "2.16.156.10011.99.1.4", "LAX2", "来安县第二人民医院"),
        _org(2, "2.16.156.10011.99.1.3", "NJMU2", "南京医科大学第二附属医院"),
        _entry(
            3,
            {
                "resourceType": "Patient",
                "identifier": [
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "MR",
                                }
                            ]
                        },
                        "system": f"{lax2}/sid/mrn",
                        "value": "0012345",
                    }
                ],
                "name": [{"use": "official", "text": "王伟", "family": "王", "given": ["伟"]}],
                "gender": "male",
                "birthDate": "1966-04-20",
            },
        ),
        _entry(
            4,
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": f"{njmu2}/sid/staff", "value": "N4102"}],
                "name": [{"text": "徐静", "family": "徐", "given": ["静"]}],
            },
        ),
        _entry(
            5,
            {
                "resourceType": "PractitionerRole",
                "practitioner": {"reference": _uuid(4)},
                "organization": {"reference": _uuid(2)},
            },
        ),
        _findings(6, "zh-Hans", LAIAN_FINDINGS, _uuid(3)),
        _entry(7, report),
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


NANSHA_FINDINGS = "右肺上叶见一磨玻璃结节，直径约8mm，边缘清楚。纵隔淋巴结未见肿大。"
NANSHA_CONCLUSION = "右肺上叶磨玻璃结节，建议3个月后复查胸部CT。"
ENGLISH_FINDINGS = (
    "A ground-glass nodule of about 8 mm is seen in the right upper lobe, well defined. "
    "No enlarged mediastinal lymph nodes."
)
ENGLISH_CONCLUSION = "Ground-glass nodule, right upper lobe. Follow-up chest CT in 3 months."
NANSHA_REPORT_ID = {"system": "https://fhir.nsch.example.cn/sid/report", "value": "NSR2026061701"}


def nansha_bundle() -> dict[str, Any]:
    """广州市第一人民医院南沙医院 chest CT, reported in Chinese by 何慧敏."""
    nsch = "https://fhir.nsch.example.cn"
    report = _report(
        lang="zh-Hans",
        base=nsch,
        report_id=NANSHA_REPORT_ID["value"],
        accession="NS2026061700021",
        exam=[
            {
                "system": "http://loinc.org",
                "code": "29252-4",
                "display": "CT Chest WO contrast",
            }
        ],
        conclusion=NANSHA_CONCLUSION,
        issued="2026-06-17T11:05:00+08:00",
    )
    report |= {
        "subject": {"reference": _uuid(13)},
        "performer": [{"reference": _uuid(11)}],
        "resultsInterpreter": [{"reference": _uuid(15)}],
        "result": [{"reference": _uuid(16)}],
    }
    entries = [
        _org(11, "2.16.156.10011.99.1.1", "NSCH", "广州市第一人民医院南沙医院"),
        _entry(
            13,
            {
                "resourceType": "Patient",
                "identifier": [{"system": f"{nsch}/sid/mrn", "value": "0098765"}],
                "name": [
                    {"use": "official", "text": "许嘉玮", "family": "许", "given": ["嘉玮"]},
                    {
                        "extension": [{"url": ABC, "valueCode": "ABC"}],
                        "use": "usual",
                        "family": "HUI",
                        "given": ["KA WAI"],
                    },
                ],
                "gender": "male",
                "birthDate": "1957-09-03",
            },
        ),
        _entry(
            14,
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": f"{nsch}/sid/staff", "value": "NS0415"}],
                "name": [{"text": "何慧敏", "family": "何", "given": ["慧敏"]}],
            },
        ),
        _entry(
            15,
            {
                "resourceType": "PractitionerRole",
                "practitioner": {"reference": _uuid(14)},
                "organization": {"reference": _uuid(11)},
            },
        ),
        _findings(16, "zh-Hans", NANSHA_FINDINGS, _uuid(13)),
        _entry(17, report),
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def english_bundle(link: dict[str, str] | None = None) -> dict[str, Any]:
    """The English report of 陳志明 (大灣區醫療集團香港合作醫療中心) on the Nansha study."""
    hkpmc = "https://fhir.hkpmc.example.hk"
    report = _report(
        lang="en",
        base=hkpmc,
        report_id="HKR-2026-0617-01",
        accession="NS2026061700021",
        exam=[],
        conclusion=ENGLISH_CONCLUSION,
        issued="2026-06-17T16:30:00+08:00",
    )
    report |= {
        "extension": [
            {
                "url": TRANSLATION_OF,
                "valueReference": {
                    "type": "DiagnosticReport",
                    "identifier": dict(link or NANSHA_REPORT_ID),
                },
            }
        ],
        "subject": {"reference": _uuid(23)},
        "resultsInterpreter": [{"reference": _uuid(25)}],
        "result": [{"reference": _uuid(26)}],
    }
    entries = [
        _org(
            21,
            "1.3.6.1.4.1.99999.1.1",
            "HKPMC",
            "Greater Bay Area Medical Group Hong Kong Partner Medical Centre",
        ),
        _entry(
            23,
            {
                "resourceType": "Patient",
                # the partner names the patient by the Nansha MRN, as its ORU's PID-3 does
                "identifier": [
                    {"system": "https://fhir.nsch.example.cn/sid/mrn", "value": "0098765"}
                ],
                "name": [{"family": "HUI", "given": ["KA WAI"]}],
                "gender": "male",
            },
        ),
        _entry(
            24,
            {
                "resourceType": "Practitioner",
                "identifier": [{"system": f"{hkpmc}/sid/staff", "value": "HK2001"}],
                "name": [{"text": "CHAN Chi Ming", "family": "CHAN", "given": ["CHI MING"]}],
            },
        ),
        _entry(
            25,
            {
                "resourceType": "PractitionerRole",
                "practitioner": {"reference": _uuid(24)},
                "organization": {"reference": _uuid(21)},
            },
        ),
        _findings(26, "en", ENGLISH_FINDINGS, _uuid(23)),
        _entry(27, report),
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def long_report(size: int = 59_000) -> dict[str, Any]:
    """The Nansha report with findings long enough for ``size`` characters of text (the
    most the variants take is MAX_TEXT); its bilingual variant renders for seconds."""
    assert size <= MAX_TEXT
    bundle = nansha_bundle()
    findings = resource_of(bundle, report_of(bundle)["result"][0]["reference"])
    need = size - sum(len(t) for t in _strings(bundle)) + len(findings["valueString"])
    sentence = "右肺上叶见一磨玻璃结节，直径约8mm，边缘清楚。纵隔淋巴结未见肿大。"
    findings["valueString"] = (sentence * (need // len(sentence) + 1))[:need]
    assert sum(len(t) for t in _strings(bundle)) == size
    return bundle


@pytest.fixture(scope="session")
def variants(settings: Settings) -> ReportVariants:
    return ReportVariants(settings)


@pytest.fixture
def laian() -> dict[str, Any]:
    return laian_bundle()


@pytest.fixture
def nansha() -> dict[str, Any]:
    return nansha_bundle()


@pytest.fixture
def english() -> dict[str, Any]:
    return english_bundle()


def report_of(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )


def resource_of(bundle: dict[str, Any], reference: str) -> dict[str, Any]:
    return next(e["resource"] for e in bundle["entry"] if e["fullUrl"] == reference)


def copy_of(value: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(value)
