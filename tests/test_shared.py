"""Frozen shared values: an in-place edit fails loudly; a copy is the copier's own."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.patient import Patient

from gateway.datafiles import data_dir, load_data_file
from gateway.shared import FrozenDict, FrozenList, freeze, is_frozen, thaw

EDITS_OF_A_DICT = [
    lambda d: d.__setitem__("x", 1),
    lambda d: d.__delitem__("name"),
    lambda d: d.update(x=1),
    lambda d: d.setdefault("x", 1),
    lambda d: d.pop("name"),
    lambda d: d.popitem(),
    lambda d: d.clear(),
    lambda d: d.__ior__({"x": 1}),
]
EDITS_OF_A_LIST = [
    lambda v: v.__setitem__(0, 1),
    lambda v: v.__setitem__(slice(0, 1), [1]),
    lambda v: v.__delitem__(0),
    lambda v: v.append(1),
    lambda v: v.extend([1]),
    lambda v: v.insert(0, 1),
    lambda v: v.pop(),
    lambda v: v.remove(v[0]),
    lambda v: v.clear(),
    lambda v: v.sort(),
    lambda v: v.reverse(),
    lambda v: v.__iadd__([1]),
    lambda v: v.__imul__(2),
]


def _patient() -> Any:
    return freeze(
        {
            "resourceType": "Patient",
            "name": [{"family": "王", "given": ["伟"]}],
            "managingOrganization": {"reference": "urn:uuid:1"},
        }
    )


@pytest.mark.parametrize("edit", EDITS_OF_A_DICT)
def test_every_edit_of_a_frozen_dict_raises(edit: Any) -> None:
    value = _patient()
    with pytest.raises(TypeError, match="shared between records"):
        edit(value)
    assert value["name"][0]["family"] == "王"


@pytest.mark.parametrize("edit", EDITS_OF_A_LIST)
def test_every_edit_of_a_frozen_list_raises(edit: Any) -> None:
    value = _patient()["name"][0]["given"]
    with pytest.raises(TypeError, match="shared between records"):
        edit(value)
    assert value == ["伟"]


def test_copies_are_plain_and_mutable() -> None:
    value = _patient()
    for mutable in (
        thaw(value),
        copy.deepcopy(value),
        pickle.loads(pickle.dumps(value)),
        orjson.loads(orjson.dumps(value)),
    ):
        assert mutable == value and not is_frozen(mutable)
        mutable["name"][0]["given"].append("x")  # nested parts too
    for shallow in (dict(value), copy.copy(value), {**value}, value | {}):
        assert type(shallow) is dict
    given = value["name"][0]["given"]
    assert type(given.__add__(["x"])) is list  # given + [...]
    assert type(given[:]) is list and type(list(given)) is list


def test_frozen_values_serialise_and_validate_as_plain_ones() -> None:
    value = _patient()
    plain = thaw(value)
    assert orjson.dumps(value, option=orjson.OPT_INDENT_2) == orjson.dumps(
        plain, option=orjson.OPT_INDENT_2
    )
    assert Patient.model_validate(value) == Patient.model_validate(plain)


def test_a_frozen_value_knows_whether_a_reference_is_inside() -> None:
    value = _patient()
    assert value.holds_refs and value["managingOrganization"].holds_refs
    assert not value["name"].holds_refs and not value["name"][0].holds_refs
    assert freeze(value) is value  # already frozen: reused, not copied


def test_data_files_are_frozen_and_shared_by_every_caller() -> None:
    path = data_dir("seeds") / "network.yaml"
    first, second = load_data_file(path), load_data_file(path)
    assert first is second and isinstance(first, FrozenDict)
    assert isinstance(first["institutions"], FrozenList)
    with pytest.raises(TypeError):
        first["institutions"][0]["name"]["en"] = "changed"
    mine = copy.deepcopy(first)
    mine["institutions"][0]["name"]["en"] = "changed"
    assert load_data_file(path)["institutions"][0]["name"]["en"] != "changed"


def test_json_data_files_are_frozen_too() -> None:
    path = next(Path(data_dir("mappings"), "conceptmaps").glob("*.json"))
    assert isinstance(load_data_file(path), FrozenDict)
