"""profiles/ holds valid FHIR resources, and every gateway-defined identifier system in
the mappings is published there as a NamingSystem."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import yaml
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.implementationguide import ImplementationGuide
from fhir.resources.R4B.namingsystem import NamingSystem
from fhir.resources.R4B.structuredefinition import StructureDefinition

from gateway import Settings
from gateway.datafiles import data_dir

OWN_PREFIX = "https://fhir-gateway.example.org/sid/"
EXTENSION_URL = re.compile(r"https://fhir-gateway\.example\.org/StructureDefinition/[A-Za-z-]+")


def test_naming_systems_are_valid_and_cover_the_gateway_systems() -> None:
    published = set()
    for path in sorted(data_dir("profiles").glob("NamingSystem-*.json")):
        ns = NamingSystem.model_validate(orjson.loads(path.read_bytes()))
        published |= {u.value for u in ns.uniqueId}
    table = yaml.safe_load(
        (data_dir("mappings") / "tables" / "identifier-authorities.yaml").read_text()
    )
    own = {uri for uri in table["map"].values() if uri.startswith(OWN_PREFIX)}
    assert own and own <= published


def test_the_gateway_extensions_in_use_are_published() -> None:
    """Every https://fhir-gateway.example.org/StructureDefinition/* URL the mappings and
    report rules write is defined by a valid StructureDefinition in profiles/."""
    defined = set()
    for path in sorted(data_dir("profiles").glob("StructureDefinition-*.json")):
        sd = StructureDefinition.model_validate(orjson.loads(path.read_bytes()))
        defined.add(sd.url)
    used = set()
    for path in sorted(data_dir("mappings").rglob("*.yaml")):
        used |= set(EXTENSION_URL.findall(path.read_text(encoding="utf-8")))
    assert used and used <= defined, sorted(used - defined)


# -- the implementation guide ------------------------------------------------------------

BASE = "https://fhir-gateway.example.org"
ROOT = Path(__file__).resolve().parent.parent
GOLDEN = sorted((ROOT / "tests" / "golden").rglob("*.expected.json")) + sorted(
    (ROOT / "examples").rglob("bundles/*.json")
)


def _published() -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(data_dir("profiles").glob("*.json"))]


def test_the_guide_lists_every_file_of_profiles() -> None:
    guide = ImplementationGuide.model_validate(
        orjson.loads((data_dir("profiles") / "ImplementationGuide-fhir-gateway.json").read_bytes())
    )
    listed = {r.reference.reference for r in guide.definition.resource}
    files = {
        f"{r['resourceType']}/{r['id']}"
        for r in _published()
        if r["resourceType"] != "ImplementationGuide"
    }
    assert listed == files


def test_one_canonical_base_and_file_names_follow_ids() -> None:
    for path in sorted(data_dir("profiles").glob("*.json")):
        resource = orjson.loads(path.read_bytes())
        assert path.name == f"{resource['resourceType']}-{resource['id']}.json"
        if "url" in resource:
            assert resource["url"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"


def test_the_capability_statement_names_each_resource_profile() -> None:
    data = orjson.loads(
        (data_dir("profiles") / "CapabilityStatement-fhir-gateway.json").read_bytes()
    )
    CapabilityStatement.model_validate(data)
    supported = {
        url
        for rest in data["rest"]
        for r in rest["resource"]
        for url in r.get("supportedProfile", [])
    }
    profiles = {r["url"] for r in _published() if r.get("kind") == "resource"}
    assert profiles and supported == profiles
    client = next(rest for rest in data["rest"] if rest["mode"] == "client")
    assert client["interaction"] == [{"code": "transaction"}]


# -- the goldens conform (a plain structural check; the validator is gateway.validation) --


def _children(node: Any, name: str) -> list[Any]:
    """The values of child ``name`` (``value[x]``: any valueXxx) of a JSON node."""
    if not isinstance(node, dict):
        return []
    if name.endswith("[x]"):
        stem = name[:-3]
        keys = [k for k in node if k.startswith(stem) and k[len(stem) : len(stem) + 1].isupper()]
    else:
        keys = [name] if name in node else []
    out: list[Any] = []
    for key in keys:
        value = node[key]
        out += value if isinstance(value, list) else [value]
    return out


def _select(nodes: list[Any], path: list[str]) -> list[Any]:
    for name in path:
        nodes = [child for node in nodes for child in _children(node, name)]
    return nodes


def _contains(pattern: Any, value: Any) -> bool:
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            _contains(v, value.get(k)) for k, v in pattern.items()
        )
    if isinstance(pattern, list):
        return isinstance(value, list) and all(any(_contains(p, v) for v in value) for p in pattern)
    return bool(pattern == value)


def _fixed(element: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith(("fixed", "pattern")):
            return key, value
    return None


def _in_slice(
    sliced: dict[str, Any], slice_: dict[str, Any], children: list[dict[str, Any]], value: Any
) -> bool:
    """Does ``value`` belong to the slice, by the sliced element's discriminators."""
    if slice_.get("type", [{}])[0].get("code") == "Extension" and "profile" in slice_["type"][0]:
        return bool(value.get("url") == slice_["type"][0]["profile"][0])
    for disc in sliced["slicing"]["discriminator"]:
        if disc["path"] == "$this":
            constraint = _fixed(slice_)
        else:
            child = next((c for c in children if c["path"].endswith("." + disc["path"])), None)
            constraint = _fixed(child) if child else None
        if constraint is None:
            return False
        got = value if disc["path"] == "$this" else value.get(disc["path"])
        if not _contains(constraint[1], got):
            return False
    return True


def _problems(resource: dict[str, Any], sd: dict[str, Any]) -> list[str]:
    """Cardinality and fixed/pattern values of every snapshot element, slices counted by
    their discriminators. Each element is checked within the instances of its parent."""
    elements = sd["snapshot"]["element"]
    by_id = {e["id"]: e for e in elements}
    problems: list[str] = []

    def check(element: dict[str, Any], parents: list[Any], where: str) -> None:
        name = element["path"].rsplit(".", 1)[-1]
        for parent in parents:
            values = _children(parent, name)
            if element.get("sliceName"):
                sliced = by_id[element["id"].rsplit(":", 1)[0]]
                children = [e for e in elements if e["id"].startswith(element["id"] + ".")]
                values = [v for v in values if _in_slice(sliced, element, children, v)]
            check_values(element, values, where)

    def check_values(element: dict[str, Any], values: list[Any], where: str) -> None:
        top = element["max"]
        if len(values) < element.get("min", 0) or (top != "*" and len(values) > int(top)):
            problems.append(f"{where}{element['id']}: {len(values)} for {element['min']}..{top}")
        fixed = _fixed(element)
        for value in values if fixed else []:
            ok = value == fixed[1] if fixed[0].startswith("fixed") else _contains(fixed[1], value)
            if not ok:
                problems.append(f"{where}{element['id']}: {value!r} is not {fixed[0]} {fixed[1]!r}")

    # instances of each element id: the root, then down the ids (slices narrow them)
    instances: dict[str, list[Any]] = {elements[0]["id"]: [resource]}
    for element in elements[1:]:
        parent_id = element["id"].rsplit(".", 1)[0] if "." in element["id"] else ""
        if element.get("sliceName"):
            parent_id = element["id"].rsplit(":", 1)[0].rsplit(".", 1)[0]
        parents = instances.get(parent_id, [])
        check(element, parents, "")
        name = element["path"].rsplit(".", 1)[-1]
        values = [v for p in parents for v in _children(p, name)]
        if element.get("sliceName"):
            sliced = by_id[element["id"].rsplit(":", 1)[0]]
            children = [e for e in elements if e["id"].startswith(element["id"] + ".")]
            values = [v for v in values if _in_slice(sliced, element, children, v)]
        instances[element["id"]] = values
    return problems


def _profile_of(resource: dict[str, Any]) -> str | None:
    rtype = resource["resourceType"]
    if rtype == "ServiceRequest":
        referral = any(
            c.get("code") == "3457005"
            for cc in resource.get("category", [])
            for c in cc.get("coding", [])
        )
        return "referral-servicerequest" if referral else "imaging-servicerequest"
    return {
        "ImagingStudy": "imagingstudy",
        "DiagnosticReport": "diagnosticreport",
        "Bundle": "transaction-bundle",
    }.get(rtype)


def _snapshots() -> dict[str, dict[str, Any]]:
    return {
        p.stem.removeprefix("StructureDefinition-"): orjson.loads(p.read_bytes())
        for p in data_dir("profiles").glob("StructureDefinition-*.json")
    }


def _conformance(bundle: dict[str, Any], extra: tuple[str, ...] = ()) -> tuple[list[str], set[str]]:
    snapshots = _snapshots()
    problems, used = [], set()
    for resource in [bundle, *(e["resource"] for e in bundle["entry"])]:
        for name in filter(
            None,
            (
                _profile_of(resource),
                *(extra if resource["resourceType"] == "DiagnosticReport" else ()),
            ),
        ):
            used.add(name)
            problems += [f"{name}: {p}" for p in _problems(resource, snapshots[name])]
            for ext in resource.get("extension", []):
                own = ext["url"].removeprefix(f"{BASE}/StructureDefinition/")
                if own in snapshots:
                    used.add(own)
                    problems += [f"{own}: {p}" for p in _problems(ext, snapshots[own])]
    return problems, used


def test_every_golden_and_example_bundle_conforms_to_the_profiles() -> None:
    used: set[str] = set()
    for path in GOLDEN:
        data = orjson.loads(path.read_bytes())
        for bundle in data if isinstance(data, list) else [data]:
            if bundle.get("resourceType") != "Bundle":
                continue
            problems, seen = _conformance(bundle)
            used |= seen
            assert problems == [], path.name
    assert used == {
        "transaction-bundle",
        "referral-servicerequest",
        "imaging-servicerequest",
        "imagingstudy",
        "diagnosticreport",
        "translation-of",
    }


def test_the_bilingual_variant_conforms(settings: Settings) -> None:
    from gateway.reports import ReportVariants

    bundles = ROOT / "examples" / "imaging" / "bundles"
    variants = ReportVariants(settings)
    chinese = (bundles / "oru_r01_nsch_cta_zh.json").read_bytes()
    english = (bundles / "oru_r01_hkpmc_cta_en.json").read_bytes()
    # with the English report, and with it pending (each renders its PDFs: seconds)
    for english_report in (english, None):
        variant = variants.variant(chinese, "bilingual", english_report)
        problems, used = _conformance(variant.resource, ("bilingual-diagnosticreport",))
        assert problems == [], variant.pending
        assert "bilingual-diagnosticreport" in used


def test_the_structural_check_bites() -> None:
    """Without this the conformance tests above could pass by checking nothing."""
    data = orjson.loads((ROOT / "tests/golden/hl7v2/ref_i14_cancel.expected.json").read_bytes())
    referral = next(
        e["resource"] for e in data["entry"] if e["resource"]["resourceType"] == "ServiceRequest"
    )
    profile = _snapshots()["referral-servicerequest"]
    assert _problems(referral, profile) == []
    broken = {**referral, "intent": "plan", "category": referral["category"][1:]}
    del broken["identifier"]
    assert sorted(p.split(":")[0] for p in _problems(broken, profile)) == [
        "ServiceRequest.category",
        "ServiceRequest.identifier",
        "ServiceRequest.intent",
    ]
    report = orjson.loads(
        (ROOT / "tests/golden/hl7v2/oru_r01_big5_english.expected.json").read_bytes()
    )
    dr = next(
        e["resource"]
        for e in report["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )
    dr["extension"][0].pop("valueReference")
    assert "translation-of: Extension.value[x]: 0 for 1..1" in _conformance(report)[0]
