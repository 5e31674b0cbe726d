"""What the output says about codes: displays are the code system's, one concept per
CodeableConcept, every gateway code system published, the zh displays as CodeSystem
supplements read from profiles/, identifier types that exist in v2-0203, one staff
identifier system per institution, one language-tag convention (docs/terminology.md)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.namingsystem import NamingSystem
from fhir.resources.R4B.valueset import ValueSet

from gateway import Converter
from gateway.datafiles import data_dir
from gateway.mapping import Terminology

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = REPO / "examples"
PROFILES = data_dir("profiles")
MAPPINGS = data_dir("mappings")
BASE = "https://fhir-gateway.example.org/"
CS_BASE = BASE + "CodeSystem/"
#: The three tags: the published ValueSet says which (what the ig binds language to).
TAGS = {
    c["code"]
    for include in orjson.loads((PROFILES / "ValueSet-report-languages.json").read_bytes())[
        "compose"
    ]["include"]
    for c in include["concept"]
}
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
#: Code systems other than the gateway's whose URLs the output may use.
OFFICIAL = (
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10",
    "http://terminology.hl7.org/CodeSystem/",
    "http://dicom.nema.org/resources/ontology/DCM",
    "urn:ietf:rfc:3986",  # ImagingStudy sopClass: the SOP Class UID as a URI
    "urn:ietf:bcp:47",
)


# -- the outputs: every golden and example Bundle ------------------------------------------


def _bundles() -> list[tuple[str, dict[str, Any]]]:
    out = []
    files = sorted(GOLDEN.rglob("*.expected.json")) + sorted(EXAMPLES.rglob("bundles/*.json"))
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        for item in data if isinstance(data, list) else [data]:
            if item.get("resourceType") == "Bundle":
                out.append((path.relative_to(REPO).as_posix(), item))
    return out


BUNDLES = _bundles()


def _resources() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, bundle in BUNDLES:
        for entry in bundle["entry"]:
            yield name, entry["resource"]


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, path)


def _codings() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in _resources():
        for path, node in _walk(resource, resource["resourceType"]):
            coded = isinstance(node.get("system"), str) and isinstance(node.get("code"), str)
            if coded and "value" not in node:  # a Quantity has system and code too
                yield f"{name}: {path}", node


def _concepts() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, resource in _resources():
        for path, node in _walk(resource, resource["resourceType"]):
            if isinstance(node.get("coding"), list):
                yield f"{name}: {path}", node


@pytest.fixture(scope="module")
def terminology() -> Terminology:
    return Terminology(MAPPINGS)


def _published() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(PROFILES.glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        if resource.get("url"):
            out[resource["url"]] = resource
    return out


def test_the_outputs_are_there() -> None:
    assert len(BUNDLES) > 20


# -- 1. displays are the code system's ------------------------------------------------------


def test_free_text_is_the_concept_text_and_the_display_the_code_systems() -> None:
    """RF1-10 ``P^患者意愿：拟返港接受冠状动脉介入治疗^HL70336``: v2-0336 P is "Patient
    Preference"; the sender's words are the CodeableConcept's text."""
    [record] = Converter().convert((GOLDEN / "hl7v2" / "ref_i12_utf8.hl7").read_bytes())
    assert record.ok and record.bundle
    [referral] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "ServiceRequest"
    ]
    [reason] = [c for c in referral["reasonCode"] if c["coding"][0]["system"].endswith("/v2-0336")]
    assert reason["coding"] == [
        {
            "system": "http://terminology.hl7.org/CodeSystem/v2-0336",
            "code": "P",
            "display": "Patient Preference",
        }
    ]
    assert reason["text"] == "患者意愿：拟返港接受冠状动脉介入治疗"


def test_every_display_is_the_code_systems(terminology: Terminology) -> None:
    """Each Coding's display is the one its code system gives (R4's v2 tables, the
    supplements' base displays, the published local code systems), or the Coding has
    none; never a sender's text or a Chinese display under an English code system."""
    wrong = []
    for where, coding in _codings():
        display = coding.get("display")
        known = terminology.display(coding["system"], coding["code"])
        if display is not None and known is not None and display != known:
            wrong.append(f"{where}: {coding['code']} {display!r} (the system's: {known!r})")
        if (
            display is not None
            and known is None
            and coding["system"].startswith(
                ("http://loinc.org", "http://hl7.org/fhir/sid/icd-10", CS_BASE)
            )
        ):
            wrong.append(f"{where}: {coding['code']} {display!r} not the system's display")
    assert not wrong, "\n".join(wrong[:20])


# -- 2. one concept per CodeableConcept -------------------------------------------------------


def test_one_concept_per_codeable_concept() -> None:
    """Two codes of one code system in a CodeableConcept are two concepts (18748-4 with
    30799-1): codings of one CodeableConcept each come from a different system."""
    mixed = []
    for where, concept in _concepts():
        systems = [c.get("system") for c in concept["coding"]]
        if len(systems) != len(set(systems)):
            codes = [(c.get("system"), c.get("code")) for c in concept["coding"]]
            mixed.append(f"{where}: {codes}")
    assert not mixed, "\n".join(mixed[:20])


@pytest.mark.parametrize(
    "source",
    ["imaging/bundles/oru_r01_lax2_ct_cobranded.json", "imaging/bundles/lax2-ct-report-local.json"],
)
def test_the_report_code_is_the_exam(source: str) -> None:
    """DiagnosticReport.code names what the report is of: the exam (Lai'an CT001 头颅CT平扫
    and its LOINC translation 30799-1, the same concept), not 18748-4 beside it."""
    bundle = json.loads((EXAMPLES / source).read_text(encoding="utf-8"))
    [report] = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    codes = [(c["system"], c["code"]) for c in report["code"]["coding"]]
    assert codes == [(CS_BASE + "lax2-99lax2", "CT001"), ("http://loinc.org", "30799-1")]


def test_a_report_without_an_exam_code_is_a_diagnostic_imaging_study() -> None:
    text = (EXAMPLES / "imaging" / "oru_r01_nsch_cta_zh.hl7").read_bytes()
    segments = text.split(b"\r")
    cleared = []
    for segment in segments:
        if segment.startswith(b"OBR|"):
            fields = segment.split(b"|")
            fields[4] = b""
            segment = b"|".join(fields)
        cleared.append(segment)
    [record] = Converter().convert(b"\r".join(cleared))
    assert record.ok and record.bundle, [i.line() for i in record.errors]
    [report] = [
        e["resource"]
        for e in record.bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert [(c["system"], c["code"]) for c in report["code"]["coding"]] == [
        ("http://loinc.org", "18748-4")
    ]
    assert report["code"]["coding"][0]["display"] == "Diagnostic imaging study"


def test_only_same_concept_conceptmap_targets_join_a_concept(tmp_path: Path) -> None:
    """A ConceptMap target that is wider than its source is another concept: it does not
    join the source's CodeableConcept."""
    import shutil

    from gateway.mapping import Env
    from gateway.mapping._functions import coding
    from gateway.network import Network

    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    path = root / "conceptmaps" / "lax2-exam-to-loinc.json"
    cm = json.loads(path.read_text(encoding="utf-8"))
    element = cm["group"][0]["element"][0]
    element["target"].append({"code": "24725-4", "display": "CT Head", "equivalence": "wider"})
    path.write_text(json.dumps(cm, ensure_ascii=False), encoding="utf-8")
    env = Env(Terminology(root, PROFILES), Network.load(data_dir("seeds") / "network.yaml"))
    codes = [c["code"] for c in coding(env, code="CT001", system="99LAX2", facility="LAX2")]
    assert codes == ["CT001", "30799-1"]


# -- 3. local code systems: canonical and published --------------------------------------------


def test_every_code_system_in_the_output_is_official_or_published() -> None:
    published = _published()
    unknown = []
    for where, coding in _codings():
        if "OperationOutcome" in where:
            continue  # error codes: the OperationOutcome's own (gateway/errors.py)
        system = coding["system"]
        if system.startswith(OFFICIAL):
            continue
        found = published.get(system)
        codes = {c["code"] for c in (found or {}).get("concept", [])}
        if found is None or found["resourceType"] != "CodeSystem" or coding["code"] not in codes:
            unknown.append(f"{where}: {system}|{coding['code']}")
    assert not unknown, "\n".join(unknown[:20])


def test_a_senders_local_code_list_has_one_canonical_url() -> None:
    """99LAX2 is Lai'an's list wherever it travels; 99LOCAL belongs to the sender."""
    from gateway.mapping import Env
    from gateway.network import Network

    env = Env(Terminology(MAPPINGS), Network.load(data_dir("seeds") / "network.yaml"))
    assert env.code_system("99LAX2", "NSCH") == CS_BASE + "lax2-99lax2"
    assert env.code_system("99LOCAL", "NSCH") == CS_BASE + "nsch-99local"
    assert env.code_system("L", "HKPMC") == CS_BASE + "hkpmc-l"
    assert env.code_system("99ZZ X", "ACME") == CS_BASE + "acme-99zz-x"


@pytest.mark.parametrize("path", sorted(PROFILES.glob("CodeSystem-*.json")), ids=lambda p: p.name)
def test_published_code_systems_are_valid_and_canonical(path: Path) -> None:
    raw = orjson.loads(path.read_bytes())
    cs = CodeSystem.model_validate(raw)
    assert cs.url == f"{CS_BASE}{cs.id}" and path.name == f"CodeSystem-{cs.id}.json"
    if cs.content == "supplement":
        return
    assert cs.count is None or cs.count == len(cs.concept or [])


@pytest.mark.parametrize("path", sorted(PROFILES.glob("ValueSet-*.json")), ids=lambda p: p.name)
def test_published_value_sets_are_valid_and_their_systems_known(path: Path) -> None:
    vs = ValueSet.model_validate(orjson.loads(path.read_bytes()))
    assert vs.url == f"{BASE}ValueSet/{vs.id}" and path.name == f"ValueSet-{vs.id}.json"
    published = _published()
    for include in vs.compose.include:
        if include.system and include.system.startswith(BASE):
            assert include.system in published


# -- 4. supplements, not fragments under official URLs ------------------------------------------


@pytest.mark.parametrize(
    ("name", "system"),
    [
        ("loinc-zh-supplement", "http://loinc.org"),
        ("snomed-zh-supplement", "http://snomed.info/sct"),
        ("icd-10-zh-supplement", "http://hl7.org/fhir/sid/icd-10"),
    ],
)
def test_zh_displays_are_code_system_supplements(name: str, system: str) -> None:
    raw = orjson.loads((PROFILES / f"CodeSystem-{name}.json").read_bytes())
    assert raw["content"] == "supplement"
    assert raw["supplements"].split("|")[0] == system
    assert raw["url"] == CS_BASE + name
    for concept in raw["concept"]:
        tags = {d["language"] for d in concept["designation"]}
        assert tags == {"zh-Hans", "zh-Hant-HK"}, concept["code"]


def test_no_code_system_reuses_an_official_url() -> None:
    """Nothing the gateway ships (mappings/, profiles/) is a CodeSystem whose url is an
    official system's: translated displays are supplements under the gateway's base."""
    for folder in (MAPPINGS, PROFILES):
        for path in sorted(folder.rglob("*.json")):
            raw = orjson.loads(path.read_bytes())
            if raw.get("resourceType") == "CodeSystem":
                assert str(raw.get("url", "")).startswith(BASE), path


def test_the_terminology_reads_the_published_supplements(terminology: Terminology) -> None:
    """One source of truth: the designations the mapping writes are exactly the published
    supplements' (profiles/), nothing else."""
    expected = {}
    for path in sorted(PROFILES.glob("CodeSystem-*-supplement.json")):
        raw = orjson.loads(path.read_bytes())
        for concept in raw["concept"]:
            expected[(raw["supplements"], concept["code"])] = {
                d["language"]: d["value"] for d in concept["designation"]
            }
    assert expected
    for (system, code), names in expected.items():
        got = terminology.designations(system, code)
        assert {k: v for k, v in got.items() if k != "en"} == names, (system, code)
    assert terminology.designations("http://loinc.org", "30799-1")["zh-Hant-HK"] == "頭顱CT平掃"


# -- 5. identifier types that exist ----------------------------------------------------------------


def test_naming_system_types_exist_in_r4_v2_0203(terminology: Terminology) -> None:
    for path in sorted(PROFILES.glob("NamingSystem-*.json")):
        ns = NamingSystem.model_validate(orjson.loads(path.read_bytes()))
        for coding in ns.type.coding if ns.type else []:
            assert coding.system == V2_0203
            known = terminology.display(V2_0203, coding.code)
            assert known is not None, f"{path.name}: {coding.code} is not in R4's v2-0203"
            assert coding.display in (None, known)


def test_the_hkid_is_typed_as_its_naming_system_says() -> None:
    """The HKID NamingSystem and the HKID identifiers the output carries agree (NI; R4's
    v2-0203 has no NNHKG), and tables/identifier-authorities.yaml names that system."""
    ns = orjson.loads((PROFILES / "NamingSystem-hkid.json").read_bytes())
    [unique] = ns["uniqueId"]
    authorities = yaml.safe_load((MAPPINGS / "tables" / "identifier-authorities.yaml").read_text())
    assert authorities["map"]["HKID"] == unique["value"]
    ns_type = [(c["system"], c["code"]) for c in ns["type"]["coding"]]
    assert ns_type == [(V2_0203, "NI")]
    seen = 0
    for _, resource in _resources():
        for ident in resource.get("identifier") or []:
            if ident.get("system") == unique["value"] and "type" in ident:
                seen += 1
                assert [(c["system"], c["code"]) for c in ident["type"]["coding"]] == ns_type
    assert seen


def test_every_identifier_type_in_the_output_exists_in_r4_v2_0203(
    terminology: Terminology,
) -> None:
    for where, coding in _codings():
        if coding["system"] == V2_0203:
            assert terminology.display(V2_0203, coding["code"]) == coding.get("display"), where


# -- 6. one staff identifier system per institution --------------------------------------------


def _practitioners(path: Path) -> dict[str, dict[str, Any]]:
    records = Converter().convert_path(path)
    assert records and all(r.ok for r in records)
    return {
        ident["value"]: e["resource"]
        for r in records
        if r.bundle
        for e in r.bundle["entry"]
        if e["resource"]["resourceType"] == "Practitioner"
        for ident in e["resource"].get("identifier", [])
    }


def test_a_radiologist_is_one_practitioner_from_hl7v2_and_cda() -> None:
    """HK2001 signs the English report as an ORU^R01 (CNN.9 = HKPMC) and as a CDA (id root
    1.3.6.1.4.1.99999.1.1.3, HKPMC's staff-number OID): one identifier, one resource."""
    from_oru = _practitioners(GOLDEN / "hl7v2" / "oru_r01_big5_english.hl7")["HK2001"]
    from_cda = _practitioners(GOLDEN / "cda" / "hkpmc-ct-report-en.xml")["HK2001"]
    assert (
        from_oru["identifier"]
        == from_cda["identifier"]
        == [{"system": "https://fhir.hkpmc.example.hk/sid/staff", "value": "HK2001"}]
    )
    assert from_oru["id"] == from_cda["id"]


def test_an_institutions_staff_oid_gives_its_staff_system() -> None:
    """HL7 v2 naming HKPMC's staff numbers by OID only (CNN.10/.11 = the OID, ISO) gives
    the same system as naming HKPMC (CNN.9); another OID stays urn:oid:."""
    from gateway.mapping import Env
    from gateway.mapping._functions import identifier_system
    from gateway.network import Network

    env = Env(Terminology(MAPPINGS), Network.load(data_dir("seeds") / "network.yaml"))
    by_oid = identifier_system(
        env, kind="staff", authority_oid="1.3.6.1.4.1.99999.1.1.3", authority_type="ISO"
    )
    by_name = identifier_system(env, kind="staff", authority="HKPMC")
    assert by_oid == by_name == "https://fhir.hkpmc.example.hk/sid/staff"
    other = identifier_system(env, kind="staff", authority_oid="1.2.3.4", authority_type="ISO")
    assert other == "urn:oid:1.2.3.4"


# -- 7. one language-tag convention --------------------------------------------------------------


def _language_tags(node: Any) -> Iterator[str]:
    for _, item in _walk(node, ""):
        if isinstance(item.get("language"), str):
            yield item["language"]
        if item.get("url") == "lang" and isinstance(item.get("valueCode"), str):
            yield item["valueCode"]


def test_the_output_uses_three_language_tags() -> None:
    assert {"zh-Hans", "zh-Hant-HK", "en"} == TAGS
    tags = {tag for _, resource in _resources() for tag in _language_tags(resource)}
    assert tags and tags <= TAGS, tags - TAGS


def test_the_published_designations_and_tables_use_the_three_tags() -> None:
    for path in sorted(PROFILES.glob("CodeSystem-*.json")):
        raw = orjson.loads(path.read_bytes())
        tags = set(_language_tags(raw))
        assert tags <= TAGS, (path.name, tags - TAGS)
    for path in sorted((MAPPINGS / "tables").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        tags = set(_language_tags(raw))
        if path.stem in ("report-language", "cda-language"):
            tags |= {str(v) for v in raw["map"].values()}
        assert tags <= TAGS, (path.name, tags - TAGS)


def test_the_report_variants_use_the_three_tags() -> None:
    """gateway/reports writes the same three tags, whatever its inputs said (zh-CN,
    zh-HK are aliases there): resource and attachment language, translation extensions.
    (A guard: the variants needed no change.)"""
    from gateway import Settings
    from gateway.reports import ReportVariants

    zh = (EXAMPLES / "imaging" / "bundles" / "oru_r01_nsch_cta_zh.json").read_bytes()
    en = (EXAMPLES / "imaging" / "bundles" / "oru_r01_hkpmc_cta_en.json").read_bytes()
    variant = ReportVariants(Settings()).variant(zh, "bilingual", en)
    tags = set(_language_tags(variant.resource))
    assert tags and tags <= TAGS, tags - TAGS
