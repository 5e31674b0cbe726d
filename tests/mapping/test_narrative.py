"""Generated narratives (gateway/mapping/_narrative.py, mappings/narrative/): every
resource of a type with rules gets one, its XHTML keeps to FHIR's rules (txt-1, txt-2),
every value is escaped, labels follow the record's languages and values stay verbatim."""

from __future__ import annotations

import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree

from gateway import Converter
from gateway.datafiles import data_dir, load_data_file
from gateway.errors import ConfigError
from gateway.mapping import Narratives
from gateway.network import Network
from gateway.shared import freeze
from tests.golden.regenerate import expected_path, inputs

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
MAPPINGS = data_dir("mappings")
NETWORK = Network.load(data_dir("seeds") / "network.yaml")
LABELS: dict[str, dict[str, str]] = load_data_file(MAPPINGS / "narrative" / "labels.yaml")["labels"]
XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_NS = "http://www.w3.org/XML/1998/namespace"

# FHIR R4 Narrative.div, txt-1 (narrative.html#xhtml): only the basic formatting elements
# of HTML 4.0 chapters 7-11 (not 9.4) and 15, <a> (name or href), images and style
# attributes; no head, body, scripts, forms, frames, objects, links or event attributes.
# The element and attribute lists of the FHIR reference validator's check.
ALLOWED_ELEMENTS = {
    "p", "br", "div", "h1", "h2", "h3", "h4", "h5", "h6", "a", "span", "b", "em", "i",
    "strong", "small", "big", "tt", "dfn", "q", "var", "abbr", "acronym", "cite",
    "blockquote", "hr", "address", "bdo", "kbd", "sub", "sup", "ul", "ol", "li", "dl",
    "dt", "dd", "pre", "table", "caption", "colgroup", "col", "thead", "tr", "tfoot",
    "tbody", "th", "td", "code", "samp", "img", "map", "area",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "title", "style", "class", "id", "lang", "dir", "accesskey", "tabindex", "href",
    "name", "src", "alt", "abbr", "axis", "headers", "scope", "colspan", "rowspan",
    "align", "valign", "width", "height", "border", "cellpadding", "cellspacing",
    "summary", "span", "char", "charoff", "start", "type", "cite", "datetime", "value",
    "shape", "coords", "nohref", "frame", "rules", f"{{{XML_NS}}}lang",
}  # fmt: skip


def fhir_narrative_problems(div: str) -> list[str]:
    """What breaks txt-1 / txt-2 in one Narrative.div (empty: none)."""
    try:
        root = etree.fromstring(div.encode())
    except etree.XMLSyntaxError as exc:
        return [f"not well-formed XML: {exc}"]
    problems = []
    if root.tag != f"{{{XHTML_NS}}}div":
        problems.append(f"root is {root.tag}, not an XHTML div")
    for node in root.iter():
        if not isinstance(node.tag, str):  # comments, processing instructions
            problems.append(f"non-element node {node!r}")
            continue
        ns, _, local = node.tag.rpartition("}")
        if ns.lstrip("{") != XHTML_NS or local not in ALLOWED_ELEMENTS:
            problems.append(f"element {node.tag} not allowed")
        for attr in node.attrib:
            if attr.lower().startswith("on") or attr not in ALLOWED_ATTRIBUTES:
                problems.append(f"attribute {attr} on {local} not allowed")
        if local == "a" and node.get("href", "").strip().lower().startswith("javascript:"):
            problems.append("javascript: link")
    if not "".join(root.itertext()).strip():
        problems.append("txt-2: no non-whitespace content")
    return problems


def _bundles(doc: Any) -> list[dict[str, Any]]:
    docs = doc if isinstance(doc, list) else [doc]
    return [d for d in docs if d.get("resourceType") == "Bundle"]


def _text(div: str) -> str:
    return "".join(etree.fromstring(div.encode()).itertext())


def _resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def _converted(converter: Converter, data: bytes) -> dict[str, Any]:
    (record,) = converter.convert(data)
    assert record.ok, record.issues
    assert record.bundle is not None
    return record.bundle


@pytest.fixture(scope="module")
def narratives() -> Narratives:
    return Narratives.load(MAPPINGS, NETWORK)


# -- the checker itself bites ----------------------------------------------------------------


@pytest.mark.parametrize(
    "div",
    [
        f'<div xmlns="{XHTML_NS}"><script>alert(1)</script>x</div>',
        f'<div xmlns="{XHTML_NS}"><p onclick="alert(1)">x</p></div>',
        f'<div xmlns="{XHTML_NS}"><iframe src="x"/>x</div>',
        f'<div xmlns="{XHTML_NS}"><a href="javascript:alert(1)">x</a></div>',
        f'<div xmlns="{XHTML_NS}"> <p> </p> </div>',
        "<div><p>x</p></div>",
        f'<div xmlns="{XHTML_NS}"><p>x &amp; <b>y</p></div>',
    ],
)
def test_the_txt_checker_refuses_what_fhir_refuses(div: str) -> None:
    assert fhir_narrative_problems(div)


# -- goldens -----------------------------------------------------------------------------------


GOLDEN_FILES = [expected_path(s) for s in inputs()]


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.name for p in GOLDEN_FILES])
def test_every_resource_of_every_golden_has_a_valid_generated_narrative(
    path: Path, narratives: Narratives
) -> None:
    bundles = _bundles(orjson.loads(path.read_bytes()))
    seen = 0
    for bundle in bundles:
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] not in narratives.types:
                assert "text" not in resource
                continue
            text = resource.get("text")
            assert text and text["status"] == "generated", resource["resourceType"]
            assert fhir_narrative_problems(text["div"]) == [], resource["resourceType"]
            seen += 1
    assert seen or not bundles


def test_the_clinical_types_all_have_rules(narratives: Narratives) -> None:
    clinical = {"ServiceRequest", "ImagingStudy", "DiagnosticReport", "Observation", "Task"}
    assert clinical <= set(narratives.types)


# -- escaping ----------------------------------------------------------------------------------

HOSTILE = 'O"BRIEN <script>alert(1)</script>'
OMI = (GOLDEN / "hl7v2" / "omi_o23.hl7").read_bytes()


def test_a_name_with_markup_quotes_and_ampersand_is_text(converter: Converter) -> None:
    # HL7 escapes '&' as \T\; the name arrives as O"BRIEN <script>…, KA & WAI'
    message = OMI.replace(b"HUI^KA WAI", HOSTILE.encode() + b"^KA \\T\\ WAI'")
    bundle = _converted(converter, message)
    (order,) = _resources(bundle, "ServiceRequest")
    div = order["text"]["div"]  # its subject line: 許嘉瑋 / O"BRIEN …, KA & WAI' (MRN …)
    assert fhir_narrative_problems(div) == []
    assert "<script" not in div
    assert f"許嘉瑋 / {HOSTILE}, KA & WAI'" in _text(div)


def test_every_value_is_escaped_in_the_markup(narratives: Narratives) -> None:
    task = {
        "resourceType": "Task",
        "status": "draft",
        "intent": "order",
        "description": "<b>&amp;\"x'</b>",
        "for": {"identifier": {"system": "urn:x", "value": "<i>1</i>"}},
    }
    div = narratives.render(task)
    assert "&lt;b&gt;&amp;amp;&quot;x&#x27;&lt;/b&gt;" in div
    assert "&lt;i&gt;1&lt;/i&gt;" in div
    assert fhir_narrative_problems(div) == []
    assert "<b>&amp;\"x'</b>" in _text(div)


def test_free_text_keeps_its_line_breaks(narratives: Narratives) -> None:
    obs = {"resourceType": "Observation", "status": "final", "valueString": "a < b\nc"}
    div = narratives.render(obs)
    assert "a &lt; b<br/>c" in div
    assert fhir_narrative_problems(div) == []


# -- languages -------------------------------------------------------------------------------


def _label(key: str, *langs: str) -> str:
    return " / ".join(LABELS[key][lang] for lang in langs)


def _golden(name: str) -> dict[str, Any]:
    (bundle,) = _bundles(orjson.loads((GOLDEN / name).read_bytes()))
    return bundle


def test_a_hong_kong_senders_record_has_traditional_and_english_labels() -> None:
    (order,) = _resources(_golden("hl7v2/ref_i12_big5.expected.json"), "ServiceRequest")
    div = order["text"]["div"]
    assert _label("status", "zh-Hant-HK", "en") in _text(div)
    assert _label("status", "zh-Hans", "en") not in _text(div)


def test_a_mainland_record_has_simplified_labels_and_keeps_a_traditional_name() -> None:
    # NSCH writes Simplified; its patient's legal name is written in Traditional script.
    bundle = _golden("hl7v2/oru_r01_chinese.expected.json")
    (report,) = _resources(bundle, "DiagnosticReport")
    (patient,) = _resources(bundle, "Patient")
    text = _text(report["text"]["div"])
    assert _label("conclusion", "zh-Hans", "en") in text
    assert patient["name"][0]["text"] == "許嘉瑋"
    assert "許嘉瑋" in text and "许嘉玮" not in text
    assert report["conclusion"] in text  # free text as written


def test_a_resource_in_english_has_english_labels_even_with_a_chinese_name() -> None:
    bundle = _golden("hl7v2/oru_r01_big5_english.expected.json")
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["language"] == "en"
    text = _text(report["text"]["div"])
    assert LABELS["conclusion"]["en"] in text
    assert LABELS["conclusion"]["zh-Hant-HK"] not in text
    assert "許嘉瑋" in text  # the name as the data has it


def _task_bundle(**fields: Any) -> dict[str, Any]:
    task = {"resourceType": "Task", "status": "requested", "intent": "order", **fields}
    return {"resourceType": "Bundle", "entry": [{"fullUrl": "urn:uuid:1", "resource": task}]}


def test_english_data_has_english_labels_only(narratives: Narratives) -> None:
    bundle = _task_bundle(
        description="Book the follow-up CT", **{"for": {"display": "CHAN, TAI MAN"}}
    )
    narratives.add(bundle, "HKPMC")  # a Hong Kong sender, all its data in English
    text = _text(bundle["entry"][0]["resource"]["text"]["div"])
    assert LABELS["Task"]["en"] in text and LABELS["status"]["en"] in text
    assert LABELS["status"]["zh-Hant-HK"] not in text
    assert "Book the follow-up CT" in text and "CHAN, TAI MAN" in text


def test_a_simplified_name_in_a_hong_kong_record_stays_simplified(narratives: Narratives) -> None:
    bundle = _task_bundle(**{"for": {"display": "张建国"}})
    narratives.add(bundle, "HKPMC")
    text = _text(bundle["entry"][0]["resource"]["text"]["div"])
    assert _label("status", "zh-Hant-HK", "en") in text
    assert "张建国" in text and "張建國" not in text


def test_a_mainland_senders_chinese_record_has_simplified_labels(narratives: Narratives) -> None:
    bundle = _task_bundle(description="复查")
    narratives.add(bundle, "NSCH")
    assert _label("status", "zh-Hans", "en") in _text(bundle["entry"][0]["resource"]["text"]["div"])


def test_the_display_of_a_code_comes_with_its_translation() -> None:
    study = _resources(_golden("dicom/lax2_chest_ct.expected.json"), "ImagingStudy")[0]
    text = _text(study["text"]["div"])
    assert "计算机断层扫描 / Computed Tomography (DICOM CT)" in text
    assert f"{study['numberOfSeries']}" in text and "胸部CT平扫" in text


def test_a_shared_frozen_coding_follows_each_records_languages(narratives: Narratives) -> None:
    # The mapping memo shares frozen codings between records; their lines are kept per
    # label language, so an English record never shows another record's Chinese.
    ct = freeze(
        {
            "coding": [
                {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                    "display": "Computed Tomography",
                    "_display": {"extension": [{
                        "url": "http://hl7.org/fhir/StructureDefinition/translation",
                        "extension": [{"url": "lang", "valueCode": "zh-HK"},
                                      {"url": "content", "valueString": "計算機斷層掃描"}],
                    }]},
                }
            ]
        }
    )  # fmt: skip
    english = {"resourceType": "Task", "language": "en", "status": "draft", "code": ct}
    chinese = {"resourceType": "Task", "language": "zh-Hant-HK", "status": "draft", "code": ct}
    for _ in range(2):
        assert "計算機斷層掃描" not in narratives.render(english)
        assert "計算機斷層掃描 / Computed Tomography (DICOM CT)" in narratives.render(chinese)


def test_a_resource_with_a_narrative_keeps_it(narratives: Narratives) -> None:
    own = {"status": "additional", "div": f'<div xmlns="{XHTML_NS}">own</div>'}
    bundle = {"entry": [{"fullUrl": "urn:uuid:1", "resource": {
        "resourceType": "Task", "status": "draft", "intent": "order", "text": own}}]}  # fmt: skip
    narratives.add(bundle, "NSCH")
    assert bundle["entry"][0]["resource"]["text"] is own


def test_text_goes_after_language_in_fhir_order(narratives: Narratives) -> None:
    bundle = {"entry": [{"fullUrl": "urn:uuid:1", "resource": {
        "resourceType": "Observation", "language": "en", "status": "final"}}]}  # fmt: skip
    narratives.add(bundle, None)
    assert list(bundle["entry"][0]["resource"]) == ["resourceType", "language", "text", "status"]


# -- data errors -------------------------------------------------------------------------------


def test_a_label_lacking_a_language_is_refused_at_start_up(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / "narrative", root / "narrative")
    labels = root / "narrative" / "labels.yaml"
    labels.write_text(
        labels.read_text(encoding="utf-8").replace(
            "status: {en: Status, zh-Hans: 状态, zh-Hant-HK: 狀態}", "status: {en: Status}"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"labels\.status: needs a text for each"):
        Narratives.load(root, NETWORK)


def test_a_row_with_an_unknown_label_is_refused_at_start_up(tmp_path: Path) -> None:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS / "narrative", root / "narrative")
    (root / "narrative" / "Encounter.yaml").write_text(
        "resourceType: Task\nrows:\n  - {label: nonsense, path: status}\n", encoding="utf-8"
    )
    with pytest.raises(ConfigError, match="no label 'nonsense'"):
        Narratives.load(root, NETWORK)


def test_holds_chinese_is_a_search_of_the_whole_json() -> None:
    """The per-value search (frozen values searched once) answers as a search of the
    resource's whole JSON does, on every resource of the golden Bundles, frozen or not."""
    import json

    from gateway.mapping._narrative import _CJK_LEADS, _holds_chinese

    def whole(resource: dict[str, object]) -> bool:
        data = orjson.dumps(resource)
        return not data.isascii() and any(lead in data for lead in _CJK_LEADS)

    golden = Path(__file__).resolve().parents[1] / "golden"
    resources = []
    for path in sorted(golden.rglob("*.expected.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for bundle in doc if isinstance(doc, list) else [doc]:
            resources += [e["resource"] for e in bundle.get("entry", ())]
    resources += [{"resourceType": "Patient", "name": [{"text": "\u3400\u9fff"}]}, {"x": "é"}]
    assert any(whole(r) for r in resources) and not all(whole(r) for r in resources)
    for resource in resources:
        shared = {k: freeze(v) for k, v in resource.items()}
        assert _holds_chinese(resource) == whole(resource) == _holds_chinese(shared)
        assert _holds_chinese(shared) == whole(resource)  # the frozen values' answers, again


@pytest.mark.parametrize(
    "keys",
    [
        ["resourceType", "id", "meta", "status"],  # the usual order: one pass
        ["resourceType", "status", "language"],  # language later: put before text
        ["meta", "resourceType", "status"],  # leading elements out of FHIR's order
        ["status", "code"],  # none of them
        ["resourceType", "id", "meta", "implicitRules", "language"],  # only them
    ],
)
def test_text_goes_after_the_leading_elements_in_fhir_order(keys: list[str]) -> None:
    """Whatever order the mapping made, the leading elements come first in FHIR's
    order, then text, then the rest in their own order."""
    from gateway.mapping._narrative import _BEFORE_TEXT, _with_text

    resource = {k: k.upper() for k in keys}
    out = _with_text(resource, "<div/>")
    lead = [k for k in _BEFORE_TEXT if k in resource]
    assert list(out) == [*lead, "text", *(k for k in keys if k not in lead)]
    assert out["text"] == {"status": "generated", "div": "<div/>"}
    assert all(out[k] == k.upper() for k in keys) and "text" not in resource


# -- a practitioner role's line, remembered across records (_role) -----------------------------


def _role_bundle(role: dict[str, Any], person: dict[str, Any], org: dict[str, Any]) -> Any:
    """A Bundle as the mapping makes it: the role, its practitioner and its organisation
    each a new dict of the memo's frozen values, and a Task the role requested."""
    task = {"resourceType": "Task", "language": "en", "status": "draft", "intent": "order"}
    task["requester"] = {"reference": "urn:uuid:role"}
    entries = [("role", "PractitionerRole", role), ("dr", "Practitioner", person)]
    entries += [("org", "Organization", org), ("task", "Task", task)]
    return {
        "entry": [
            {"fullUrl": f"urn:uuid:{url}", "resource": {"resourceType": rtype, **fields}}
            for url, rtype, fields in entries
        ]
    }


def _requester(narratives: Narratives, bundle: Any) -> str:
    narratives.add(bundle, "NSCH")
    div = bundle["entry"][-1]["resource"]["text"]["div"]
    return _text(div).split("Requester")[1]


def _staff(name: str) -> Any:
    return freeze(
        {
            "name": [{"family": name, "given": ["Wing"]}],
            "identifier": [{"system": "urn:staff", "value": "D1"}],
        }
    )


def test_a_recurring_role_shows_what_its_references_hold_in_each_record() -> None:
    # The role recurs (the same frozen values in every record); what it references
    # changes between records: a name merged into the practitioner, a new organisation
    # name. Each record's narrative shows its own.
    narratives = Narratives.load(MAPPINGS, NETWORK)
    role = freeze({"practitioner": {"reference": "urn:uuid:dr"},
                   "organization": {"reference": "urn:uuid:org"}})  # fmt: skip
    chan, wong = _staff("Chan"), _staff("Wong")
    org = {"name": "North District Hospital"}
    assert "Chan, Wing (D1) — North District Hospital" in _requester(
        narratives, _role_bundle(role, chan, org)
    )
    assert "Chan, Wing (D1) — North District Hospital" in _requester(
        narratives, _role_bundle(role, chan, org)
    )
    assert "Wong, Wing (D1) — North District Hospital" in _requester(
        narratives, _role_bundle(role, wong, org)
    )
    merged = {**chan, "name": [*chan["name"], {"text": "陳永"}]}  # the record's own list
    assert "Chan, Wing / 陳永 (D1)" in _requester(narratives, _role_bundle(role, merged, org))
    other = {"name": "Tai Po Hospital"}
    assert "Wong, Wing (D1) — Tai Po Hospital" in _requester(
        narratives, _role_bundle(role, wong, other)
    )
    identified = {**wong, "identifier": freeze([{"system": "urn:staff", "value": "D2"}])}
    assert "Wong, Wing (D2) — Tai Po Hospital" in _requester(
        narratives, _role_bundle(role, identified, other)
    )
    renamed = {**identified, "name": freeze([{"family": "Ho", "given": ["Wing"]}])}
    assert "Ho, Wing (D2) — Tai Po Hospital" in _requester(
        narratives, _role_bundle(role, renamed, other)
    )
    # the same practitioner reference in a role at another organisation
    moved = freeze({"practitioner": role["practitioner"],
                    "organization": {"reference": "urn:uuid:org2"}})  # fmt: skip
    bundle = _role_bundle(moved, renamed, other)
    yan_chai = {"resourceType": "Organization", "name": "Yan Chai"}
    bundle["entry"].insert(0, {"fullUrl": "urn:uuid:org2", "resource": yan_chai})
    assert "Ho, Wing (D2) — Yan Chai" in _requester(narratives, bundle)
    gone = _role_bundle(role, wong, other)
    del gone["entry"][2]  # the organisation is not in this record
    assert _requester(narratives, gone) == "Wong, Wing (D1)"


def test_a_role_s_line_in_one_label_language_is_not_anothers() -> None:
    narratives = Narratives.load(MAPPINGS, NETWORK)
    role = freeze({"practitioner": {"reference": "urn:uuid:dr"},
                   "organization": {"reference": "urn:uuid:org"}})  # fmt: skip
    national_id = {"type": {"coding": [{"code": "NI"}]}, "value": "X1"}
    staff = freeze({"name": [{"text": "陳大文"}], "identifier": [national_id]})
    org = {"name": "North District Hospital"}
    english = _role_bundle(role, staff, org)
    hk = _role_bundle(role, staff, org)
    hk["entry"][-1]["resource"]["language"] = "zh-Hant-HK"
    assert "陳大文 (ID no. X1)" in _requester(narratives, english)
    narratives.add(hk, "NSCH")
    assert "陳大文 (證件號碼 / ID no. X1)" in _text(hk["entry"][-1]["resource"]["text"]["div"])


def test_the_roles_remembered_stay_bounded_in_bytes() -> None:
    # 5,000 roles met once each (a feed's staff over a long run; here one practitioner
    # in 5,000 roles, so that only the roles' memo could grow): it keeps a bounded
    # number of them, so the bytes it holds stop growing
    narratives = Narratives.load(MAPPINGS, NETWORK)
    org = {"name": "North District Hospital"}
    staff = _staff("Chan")

    def meet(count: int) -> None:
        for _ in range(count):
            role = freeze({"practitioner": {"reference": "urn:uuid:dr"},
                           "organization": {"reference": "urn:uuid:org"}})  # fmt: skip
            narratives.add(_role_bundle(role, staff, org), "NSCH")

    meet(600)  # the memo filled once: from then on what it holds stays under its bound
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        meet(5_000)
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 500_000
