"""Review of the merged NFKC look-ups (gateway/network.py): an OID that find() reads as
another institution's before it reaches the OIDs (a name or alias written with the
``urn:oid:`` prefix, a facility code or key that is the OID) was let through by the
load-time check, which compared the bare OID with the names only."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.network import Network
from tests.test_network import _institution, _refused, _write

OID = "2.16.156.10011.99.1.2"


def test_an_alias_that_is_another_institutions_oid_as_a_urn_is_refused(tmp_path: Path) -> None:
    # find('urn:oid:…') tries the names before the OIDs: the alias found nsch for every
    # Provenance, signer certificate and route naming nsgp by its OID (nsgp's own
    # certificate then named no institution, its Bundles refused as another's)
    path = _write(
        tmp_path,
        _institution("nsch", alias=[f"URN:OID:{OID}"]),
        _institution("nsgp", oid=OID),
    )
    assert OID in _refused(path)


def test_a_facility_code_that_is_another_institutions_oid_is_refused(tmp_path: Path) -> None:
    # MSH-4 may carry an OID as the facility code: find(OID) tried the codes first and
    # found nsch, while find('urn:oid:' + OID) found nsgp
    path = _write(tmp_path, _institution("nsch", facility=OID), _institution("nsgp", oid=OID))
    assert OID in _refused(path)


def test_a_key_that_is_another_institutions_oid_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path, _institution(OID, facility="NSCH"), _institution("nsgp", oid=f"urn:oid:{OID}")
    )
    assert OID in _refused(path)


def test_an_institution_whose_own_code_and_alias_are_its_oid_loads(tmp_path: Path) -> None:
    # its own spellings of its OID are no ambiguity
    path = _write(tmp_path, _institution("nsgp", facility=OID, oid=OID, alias=[f"urn:oid:{OID}"]))
    network = Network.load(path)
    assert network.find(OID) is network.find(f"urn:oid:{OID}") is network.institution("nsgp")


@pytest.mark.parametrize("field", ["alias", "spellings"])
def test_an_alias_written_as_one_text_not_a_list_is_refused(tmp_path: Path, field: str) -> None:
    # a careless 'alias: 南山医院' was read character by character: the alias itself found
    # nothing, and a sender naming the institution '院' (or 'Ｎ') found it
    path = _write(tmp_path, _institution("nsch", **{field: "南山医院"}))
    with pytest.raises(ConfigError) as caught:
        Network.load(path)
    assert caught.value.code == "config.network"
    assert f"'{field}'" in caught.value.issue.message


@pytest.mark.parametrize("blank", [" ", "\u3000", "\u00a0", "urn:oid: "])
def test_a_blank_text_finds_no_institution_with_an_empty_name_or_oid(
    tmp_path: Path, blank: str
) -> None:
    # an empty name (a language left blank) or OID was indexed as '', and every text
    # that folds to nothing (a space-padded empty DICOM InstitutionName, a full-width
    # space) found that institution and read the record under its identifier systems
    path = _write(
        tmp_path,
        _institution("nsch", name={"en": "Nansha", "zh-Hans": ""}),
        _institution("nsgp", oid="urn:oid:"),
    )
    network = Network.load(path)
    assert network.find(blank) is None
    assert network.institution(blank) is None


def test_a_name_or_alias_left_empty_in_yaml_is_no_name_none(tmp_path: Path) -> None:
    # YAML reads 'zh-Hans:' with nothing after it as null, which was indexed as the name
    # 'None': a sender naming its institution 'NONE' or 'none' found this one
    path = _write(
        tmp_path, _institution("nsch", name={"en": "Nansha", "zh-Hans": None}, alias=[None])
    )
    network = Network.load(path)
    assert network.find("None") is None
    assert network.institution("nsch") is not None
    assert network.institution("nsch").name("zh-Hans") == "Nansha"  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["key", "facility", "base"])
def test_a_key_code_or_base_left_empty_in_yaml_is_refused(tmp_path: Path, field: str) -> None:
    # 'facility:' with nothing after it was the facility code 'NONE'
    entry = _institution("nsch")
    entry[field] = None
    path = _write(tmp_path, entry)
    with pytest.raises(ConfigError) as caught:
        Network.load(path)
    assert caught.value.code == "config.network"
    assert field in caught.value.issue.message
