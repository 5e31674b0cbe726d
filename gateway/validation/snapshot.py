"""Snapshots of the gateway's StructureDefinitions, made from their differentials over the
base R4 definitions of the official core package (``corepkg``), the way FHIR's snapshot
generation does for what the gateway's profiles use:

* each differential element is merged into the element of the same id (min, max, type,
  fixed/pattern values, binding, short, definition; constraints are added to the
  base's, with the profile as their source);
* an element inside a data type (``DiagnosticReport.code.coding.system``) expands its
  parent's type first (its children from that type's own snapshot, renamed);
* a slice (``ServiceRequest.identifier:placer``) is a copy of the sliced element,
  placed after the element's other slices; its children expand from its type.

A differential element that names nothing in the base, a min below the base's or a max
above it is a ``config.profile`` error naming the profile and the element. Profiles
based on another gateway profile are built on that profile's snapshot.

``python -m gateway.validation.snapshot`` (``make profiles``) rewrites every
``profiles/StructureDefinition-*.json`` with its snapshot, then the ImplementationGuide
and CapabilityStatement (``igpub``) and the browsable pages under ``docs/profiles/``.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from .corepkg import core_by_url

__all__ = [
    "dump_json",
    "generate_snapshot",
    "local_profiles",
    "main",
    "profile_resolver",
    "with_snapshot",
]

Element = dict[str, Any]
StructureDefinition = dict[str, Any]
Resolver = Callable[[str], StructureDefinition | None]

CORE = "http://hl7.org/fhir/StructureDefinition/"
# Keys of a differential element merged into the snapshot element by replacement;
# `constraint` is added to the base's, `id`/`path` name the element.
_NOT_MERGED = {"id", "path", "constraint"}


def _fail(profile: str, element: str, problem: str) -> ConfigError:
    return ConfigError("config.profile", f"profile {profile}: {problem}", location=element or None)


def _max(value: str | None) -> float:
    return float("inf") if value in (None, "*") else float(str(value))


def _segments(element_id: str) -> list[str]:
    return element_id.split(".")


def _path_of(element_id: str) -> str:
    """The element path of an id (slice names removed)."""
    return ".".join(seg.split(":", 1)[0] for seg in _segments(element_id))


def _subtree_end(elements: list[Element], index: int) -> int:
    """The index after the element at ``index``, its children and its slices."""
    root = elements[index]["id"]
    end = index + 1
    while end < len(elements):
        other = elements[end]["id"]
        if not (other.startswith(root + ".") or other.startswith(root + ":")):
            break
        end += 1
    return end


def _find(elements: list[Element], element_id: str) -> int | None:
    for index, element in enumerate(elements):
        if element["id"] == element_id:
            return index
    return None


class _Builder:
    def __init__(self, profile: StructureDefinition, resolve: Resolver) -> None:
        self.url = str(profile.get("url", profile.get("id", "?")))
        self.resolve = resolve
        base_url = profile.get("baseDefinition")
        if not isinstance(base_url, str):
            raise _fail(self.url, "", "has no baseDefinition")
        base = resolve(base_url)
        if base is None or "snapshot" not in base:
            raise _fail(self.url, "", f"its base {base_url} is not known (with a snapshot)")
        self.elements: list[Element] = copy.deepcopy(base["snapshot"]["element"])

    def type_children(self, type_code: str) -> list[Element]:
        sd = self.resolve(CORE + type_code)
        if sd is None or "snapshot" not in sd:
            raise _fail(self.url, type_code, f"data type {type_code} is not in the core package")
        return list(sd["snapshot"]["element"][1:])

    def ensure(self, element_id: str) -> int:
        """The index of the element with this id, made (expanded or sliced) if need be."""
        found = _find(self.elements, element_id)
        if found is not None:
            return found
        segments = _segments(element_id)
        if len(segments) < 2:
            raise _fail(
                self.url, element_id, "the differential names a root that is not the base's"
            )
        last = segments[-1]
        parent_id = ".".join(segments[:-1])
        name, _, slice_name = last.partition(":")
        if slice_name:
            return self.make_slice(parent_id + "." + name, slice_name)
        parent = self.ensure(parent_id)
        self.expand(parent)
        found = _find(self.elements, element_id)
        if found is None:
            raise _fail(self.url, element_id, f"the base has no element {_path_of(element_id)}")
        return found

    def expand(self, parent_index: int) -> None:
        """Insert the children of the parent's data type, unless it has children already."""
        parent = self.elements[parent_index]
        parent_id = parent["id"]
        following = (
            self.elements[parent_index + 1] if parent_index + 1 < len(self.elements) else None
        )
        if following is not None and following["id"].startswith(parent_id + "."):
            return
        types = parent.get("type") or []
        codes = {t.get("code") for t in types}
        if len(codes) != 1:
            raise _fail(
                self.url,
                parent_id,
                "an element inside a choice of types (or of no type) cannot be constrained; "
                "restrict the type first",
            )
        (code,) = codes
        if "contentReference" in parent or code in ("BackboneElement", "Element"):
            raise _fail(self.url, parent_id, "its children are not in the base")
        children = []
        for child in self._template(parent_id, str(code)):
            made = copy.deepcopy(child)
            made["id"] = parent_id + made["id"][len(child["_prefix"]) :]
            made["path"] = parent["path"] + made["path"][len(child["_path"]) :]
            made.pop("_prefix")
            made.pop("_path")
            children.append(made)
        self.elements[parent_index + 1 : parent_index + 1] = children

    def _template(self, parent_id: str, code: str) -> list[Element]:
        """The children a new subtree starts from, each with the id and path prefix to
        replace: a slice's are those of the element it slices, when that one has
        children (what holds for every slice, e.g. a contentType the base profile
        requires), else the data type's own."""
        sliced_id, _, slice_name = parent_id.rpartition(":")
        if slice_name and "." not in slice_name:
            sliced = _find(self.elements, sliced_id)
            if sliced is not None:
                end = _subtree_end(self.elements, sliced)
                path = self.elements[sliced]["path"]
                own = [
                    {**e, "_prefix": sliced_id, "_path": path}
                    for e in self.elements[sliced + 1 : end]
                    if e["id"].startswith(sliced_id + ".")
                ]
                if own:
                    return own
        return [{**e, "_prefix": code, "_path": code} for e in self.type_children(code)]

    def make_slice(self, sliced_id: str, slice_name: str) -> int:
        sliced_index = self.ensure(sliced_id)
        sliced = self.elements[sliced_index]
        if "slicing" not in sliced and not sliced["path"].endswith("xtension"):
            raise _fail(self.url, sliced_id, f"slice {slice_name} of an element that is not sliced")
        made = copy.deepcopy(sliced)
        made.pop("slicing", None)
        made["id"] = f"{sliced_id}:{slice_name}"
        made["sliceName"] = slice_name
        made["min"] = 0  # the sliced element's min counts all slices together
        # a slice starts with the sliced element's own definition, none of its children
        at = _subtree_end(self.elements, sliced_index)
        self.elements.insert(at, made)
        return at

    def merge(self, index: int, diff: Element) -> None:
        element = self.elements[index]
        where = element["id"]
        if "min" in diff and int(diff["min"]) < int(element.get("min", 0)):
            raise _fail(
                self.url, where, f"min {diff['min']} is below the base's {element.get('min')}"
            )
        if "max" in diff and _max(diff["max"]) > _max(element.get("max")):
            raise _fail(
                self.url, where, f"max {diff['max']} is above the base's {element.get('max')}"
            )
        if "min" in diff and "max" not in diff and int(diff["min"]) > _max(element.get("max")):
            raise _fail(self.url, where, f"min {diff['min']} is above max {element.get('max')}")
        for key, value in diff.items():
            if key not in _NOT_MERGED:
                element[key] = copy.deepcopy(value)
        for constraint in diff.get("constraint", []):
            added = copy.deepcopy(constraint)
            added.setdefault("source", self.url)
            kept = [c for c in element.get("constraint", []) if c.get("key") != added.get("key")]
            element["constraint"] = [*kept, added]

    def build(self, differential: list[Element]) -> list[Element]:
        root = self.elements[0]["path"]
        for diff in differential:
            path = str(diff.get("path", ""))
            element_id = str(diff.get("id") or path)
            if _path_of(element_id) != path:
                raise _fail(self.url, element_id, f"id and path ({path}) disagree")
            if path.split(".")[0] != root:
                raise _fail(self.url, element_id, f"the base's root is {root}")
            self.merge(self.ensure(element_id), diff)
        return self.elements


def generate_snapshot(profile: StructureDefinition, resolve: Resolver) -> list[Element]:
    """The snapshot elements of ``profile`` from its differential over its base."""
    differential = profile.get("differential", {}).get("element", [])
    return _Builder(profile, resolve).build(differential)


def with_snapshot(profile: StructureDefinition, resolve: Resolver) -> StructureDefinition:
    """The profile with its snapshot (placed before the differential, as FHIR orders them)."""
    out = {k: v for k, v in profile.items() if k not in ("snapshot", "differential")}
    out["snapshot"] = {"element": generate_snapshot(profile, resolve)}
    out["differential"] = profile.get("differential", {"element": []})
    return out


def local_profiles(folder: Path) -> dict[str, StructureDefinition]:
    """The StructureDefinitions of a folder by canonical URL."""
    found: dict[str, StructureDefinition] = {}
    for path in sorted(folder.glob("StructureDefinition-*.json")):
        sd = orjson.loads(path.read_bytes())
        found[str(sd["url"])] = sd
    return found


def profile_resolver(local: Mapping[str, StructureDefinition]) -> Resolver:
    """Resolves the core package's definitions and the local ones (snapshots made on
    demand, a profile on another gateway profile built on that one's snapshot)."""
    made: dict[str, StructureDefinition] = {}

    def resolve(url: str) -> StructureDefinition | None:
        url = url.split("|", 1)[0]
        if url in local:
            if url not in made:
                made[url] = with_snapshot(local[url], resolve)
            return made[url]
        return core_by_url("StructureDefinition", url)

    return resolve


def dump_json(resource: Mapping[str, Any]) -> bytes:
    """The bytes of a published resource: UTF-8, 2-space indent, a final newline."""
    return orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n"


def regenerate(folder: Path) -> dict[Path, bytes]:
    """Every StructureDefinition file of ``folder`` as it should be (with its snapshot)."""
    local = local_profiles(folder)
    resolve = profile_resolver(local)
    out: dict[Path, bytes] = {}
    for path in sorted(folder.glob("StructureDefinition-*.json")):
        sd = orjson.loads(path.read_bytes())
        out[path] = dump_json(with_snapshot(sd, resolve))
    return out


def main(argv: list[str] | None = None) -> int:
    from ..datafiles import data_dir
    from . import igpub

    args = sys.argv[1:] if argv is None else argv
    folder = Path(args[0]) if args else data_dir("profiles")
    docs = Path(args[1]) if len(args) > 1 else folder.parent / "docs" / "profiles"
    written = 0
    for path, data in [*regenerate(folder).items(), *igpub.publish(folder, docs).items()]:
        if not path.exists() or path.read_bytes() != data:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            written += 1
    print(f"profiles: {written} file(s) written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
