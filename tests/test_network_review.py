"""Review of the network file's ambiguity check (config.network-ambiguous, gateway/
network.py): spellings that find() reads as one institution's while the check at load
let through: each is refused now (keys, OIDs and facility codes are folded as the
look-ups fold them, and a name that is another's OID is refused as it shadows it)."""

from __future__ import annotations

from pathlib import Path

from tests.test_network import _institution, _refused, _write


def test_a_name_that_is_another_institutions_key_in_another_case_is_refused(
    tmp_path: Path,
) -> None:
    # find() tries the key (as written, before the names): a sender writing the clinic's
    # alias 'Gz1' as 'gz1' got the hospital whose key is gz1, while the check compared
    # the alias with the keys as written ('Gz1' is no key)
    path = _write(
        tmp_path,
        _institution("gz1", facility="GZX"),
        _institution("nsgp", alias=["Gz1"]),
    )
    assert "gz1" in _refused(path).casefold()


def test_an_alias_that_is_another_institutions_oid_is_refused(tmp_path: Path) -> None:
    # find() tries names before OIDs: an OID pasted into another institution's aliases
    # found that one for every record naming the institution by its OID
    path = _write(
        tmp_path,
        _institution("nsch", alias=["2.16.156.10011.99.1.2"]),
        _institution("nsgp", oid="2.16.156.10011.99.1.2"),
    )
    assert "'2.16.156.10011.99.1.2'" in _refused(path)


def test_one_oid_written_with_and_without_its_urn_prefix_is_refused(tmp_path: Path) -> None:
    # find() removes 'urn:oid:' from what it looks up, not from the file: the first is
    # never found by its OID, the second is found by both spellings
    path = _write(
        tmp_path,
        _institution("nsch", oid="urn:oid:2.16.156.10011.99.1.1"),
        _institution("nsgp", oid="2.16.156.10011.99.1.1"),
    )
    assert "2.16.156.10011.99.1.1" in _refused(path)


def test_a_facility_code_padded_in_the_file_is_one_code(tmp_path: Path) -> None:
    # find() strips what it looks up, the index keeps the file's spaces: 'NSCH ' is
    # never found, and a second institution with NSCH takes its records unrefused
    path = _write(
        tmp_path, _institution("first", facility="NSCH "), _institution("second", facility="NSCH")
    )
    assert "'NSCH'" in _refused(path)
