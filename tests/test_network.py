"""A name, alias, spelling or code that the network file gives to two institutions is
refused at load (``config.network-ambiguous``): looked up, the first listed would win
silently, and a record from the other would be read under its identifier systems (its
MRNs filed as the first one's patients)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.network import Network
from tests.gateway_cli import run

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "hl7v2"


def _institution(key: str, **extra: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "key": key,
        "facility": key.upper(),
        "base": f"https://fhir.{key}.example.cn",
        "name": {"en": f"Hospital {key}"},
    }
    entry.update(extra)
    return entry


def _write(tmp_path: Path, *institutions: dict[str, Any]) -> Path:
    path = tmp_path / "network.yaml"
    path.write_text(
        yaml.safe_dump({"institutions": list(institutions)}, allow_unicode=True), encoding="utf-8"
    )
    return path


def _refused(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        Network.load(path)
    assert caught.value.code == "config.network-ambiguous"
    return caught.value.issue.message


def test_the_shipped_network_loads_and_each_name_finds_its_own_institution() -> None:
    # seeds/network.yaml is the one network file in the repository (demo, docs and the
    # tests' networks are copies or edits of it)
    network = Network.load(REPO / "seeds" / "network.yaml")
    seeds = yaml.safe_load((REPO / "seeds" / "network.yaml").read_text(encoding="utf-8"))
    for entry in seeds["institutions"]:
        names = [*entry["name"].values(), *entry.get("alias", ()), *entry.get("spellings", ())]
        for name in [entry["key"], entry["facility"], entry["oid"], *names]:
            found = network.find(name)
            assert found is not None and found.key == entry["key"], name


def test_two_institutions_with_one_facility_code_are_refused(tmp_path: Path) -> None:
    # looked up upper-cased: 'Nsch' and 'NSCH' are one code
    path = _write(tmp_path, _institution("nsch"), _institution("clinic", facility="Nsch"))
    message = _refused(path)
    assert "'NSCH'" in message and "nsch (NSCH)" in message and "clinic (Nsch)" in message


def test_an_alias_differing_only_in_case_and_spaces_is_refused(tmp_path: Path) -> None:
    # _fold folds case and runs of white space (an ideographic space among them)
    path = _write(
        tmp_path,
        _institution("nsch", alias=["Nansha  Central Hospital"]),
        _institution("nsgp", alias=["nansha\u3000central HOSPITAL "]),
    )
    message = _refused(path)
    assert "'nansha central hospital'" in message  # the spelling as looked up
    assert "nsch (NSCH)" in message and "nsgp (NSGP)" in message


def test_a_traditional_name_that_is_another_institutions_alias_is_refused(
    tmp_path: Path,
) -> None:
    # the Hong Kong centre's own name, in Traditional, listed as a clinic's alias
    path = _write(
        tmp_path,
        _institution("hkpmc", name={"zh-Hant": "大灣區醫療集團香港合作醫療中心"}),
        _institution("nsgp", alias=["大灣區醫療集團香港合作醫療中心"]),
    )
    message = _refused(path)
    assert "'大灣區醫療集團香港合作醫療中心'" in message
    assert "hkpmc (HKPMC)" in message and "nsgp (NSGP)" in message


def test_a_spelling_shared_with_another_institution_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _institution("hkpmc", spellings=["大湾区医疗集团香港合作医疗中心"]),
        _institution("nsch", name={"zh-Hans": "大湾区医疗集团香港合作医疗中心"}),
    )
    assert "大湾区医疗集团香港合作医疗中心" in _refused(path)


def test_a_name_read_as_another_institutions_code_is_refused(tmp_path: Path) -> None:
    # find() tries codes before names: this alias would find NSCH, never the clinic
    path = _write(tmp_path, _institution("nsch"), _institution("nsgp", alias=["nsch"]))
    message = _refused(path)
    assert "'nsch'" in message and "nsch (NSCH)" in message and "nsgp (NSGP)" in message


def test_a_key_read_as_another_institutions_facility_code_is_refused(tmp_path: Path) -> None:
    # institution() tries the facility code (folded) before the key (folded too: the
    # keys lax2 and LAX2 of two institutions are refused as one key)
    path = _write(
        tmp_path,
        _institution("laian", facility="LAX2"),
        _institution("LAX2", facility="LAX3", name={"en": "Lai an"}),
    )
    assert "'LAX2'" in _refused(path)


def test_two_institutions_with_one_oid_are_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _institution("nsch", oid="2.16.156.10011.99.1.1"),
        _institution("nsgp", oid="2.16.156.10011.99.1.1"),
    )
    assert "'2.16.156.10011.99.1.1'" in _refused(path)


def test_one_institution_may_give_a_name_twice(tmp_path: Path) -> None:
    # the Hong Kong centre lists its Traditional name as an alias too (seeds/network.yaml)
    name = "大灣區醫療集團香港合作醫療中心"
    path = _write(tmp_path, _institution("hkpmc", name={"zh-Hant": name}, alias=[name, "HKPMC"]))
    found = Network.load(path).find(name)
    assert found is not None and found.key == "hkpmc"


def test_the_error_names_the_file_the_spelling_and_both_institutions_on_the_cli(
    tmp_path: Path,
) -> None:
    path = _write(
        tmp_path,
        _institution("nsch", alias=["Nansha Central Hospital"]),
        _institution("nsgp", alias=["NANSHA CENTRAL HOSPITAL"]),
    )
    (tmp_path / "gateway.toml").write_text(f'network = "{path}"\n', encoding="utf-8")
    proc = run("convert", str(EXAMPLES / "ref_i12_nsgp_to_nsch.hl7"), home=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert lines == [
        f"error: {path}: the name or alias 'nansha central hospital' (as looked up) names two "
        "institutions, nsch (NSCH) and nsgp (NSGP): a record from one would be read under "
        "the other's identifier systems; give each name, alias, spelling, key, facility "
        "code and OID to one institution only [config.network-ambiguous]"
    ]


# -- full-width and other compatibility forms (NFKC) ---------------------------------------
# Chinese hospital systems often send codes and names in full-width ASCII: the look-ups
# fold them with NFKC (then case, then white space), and so does the check at load.


def test_full_width_codes_names_and_oids_find_their_institution() -> None:
    network = Network.load(REPO / "seeds" / "network.yaml")
    for spelling, key in [
        ("ＮＳＣＨ", "nsch"),
        ("ｈｋｐｍｃ", "hkpmc"),
        ("ＮＪＭＵ２", "njmu2"),  # a full-width digit
        ("Ｎａｎｓｈａ　Ｃｅｎｔｒａｌ　Ｈｏｓｐｉｔａｌ", "nsch"),  # ideographic spaces
        ("ＨＫ ｐａｒｔｎｅｒ ｍｅｄｉｃａｌ ｃｅｎｔｒｅ", "hkpmc"),
        ("Ｈｏｎｇ Ｋｏｎｇ－ｓｔｙｌｅ ｆａｍｉｌｙ ｄｏｃｔｏｒ ｃｌｉｎｉｃ", "nsgp"),  # U+FF0D
        ("urn:oid:２．１６．１５６．１００１１．９９．１．４", "lax2"),
    ]:
        found = network.find(spelling)
        assert found is not None and found.key == key, spelling
    # institution() (HL7 facility codes: MSH-4, CX-4, HD.1) and the systems it gives
    nsch = network.institution("ＮＳＣＨ")
    assert nsch is not None and nsch.key == "nsch"
    assert network.base("ＮＳＣＨ") == "https://fhir.nsch.example.cn"
    assert network.charset("ＬＡＸ２") == network.charset("LAX2") is not None


def test_a_full_width_facility_code_of_another_institution_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _institution("nsch"), _institution("clinic", facility="ＮＳＣＨ"))
    message = _refused(path)
    assert "'NSCH'" in message and "nsch (NSCH)" in message and "clinic (ＮＳＣＨ)" in message


def test_a_full_width_alias_of_another_institutions_name_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        _institution("nsch", alias=["Nansha Central Hospital"]),
        _institution("nsgp", alias=["Ｎａｎｓｈａ　Ｃｅｎｔｒａｌ　Ｈｏｓｐｉｔａｌ"]),
    )
    assert "'nansha central hospital'" in _refused(path)


def test_a_full_width_name_read_as_another_institutions_code_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, _institution("nsch"), _institution("nsgp", alias=["ｎｓｃｈ"]))
    message = _refused(path)
    assert "'ｎｓｃｈ'" in message and "nsch (NSCH)" in message and "nsgp (NSGP)" in message


def test_traditional_and_simplified_names_stay_two_institutions(tmp_path: Path) -> None:
    # NFKC folds full-width digits, never one script into the other: two institutions
    # may be named in Traditional and in Simplified, and each spelling finds its own
    hant, hans = "來安縣第2人民醫院", "来安县第2人民医院"
    path = _write(
        tmp_path,
        _institution("hk", name={"zh-Hant": hant}),
        _institution("cn", name={"zh-Hans": hans}),
    )
    network = Network.load(path)
    for spelling, key in [
        ("來安縣第２人民醫院", "hk"),
        ("来安县第２人民医院", "cn"),
        (hant, "hk"),
        (hans, "cn"),
    ]:
        found = network.find(spelling)
        assert found is not None and found.key == key, spelling


def test_an_oid_below_an_institutions_own_is_one_it_assigned(tmp_path: Path) -> None:
    """``under_oid`` (the DICOM sender check reads an issuer's OID with it): an OID in an
    institution's arc is its own (the longest arc wins); a sibling arc that only shares
    the digits (1.2.34 beside 1.2.3) is not, nor is the institution's OID itself
    (``find``'s)."""
    path = _write(tmp_path, _institution("a", oid="1.2.3"), _institution("b", oid="1.2.3.4"))
    network = Network.load(path)
    found = {oid: network.under_oid(oid) for oid in ("1.2.3.9", "urn:oid:1.2.3.4.5")}
    assert {oid: i.key if i else None for oid, i in found.items()} == {
        "1.2.3.9": "a",
        "urn:oid:1.2.3.4.5": "b",
    }
    assert network.under_oid("1.2.34.1") is None and network.under_oid("1.2.3") is None
