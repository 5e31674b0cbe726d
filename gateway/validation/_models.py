"""Structural validation with the fhir.resources R4B models, and reference checks.

fhir.resources' R4B models are structurally identical to R4 for the resources the
gateway emits. Pydantic errors are translated into Issues with a FHIRPath-like
location (``Bundle.entry[2].resource.birthDate``).
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError as PydanticError

from ..errors import Issue, shape

__all__ = ["check_references", "validate_bundle"]


def _location(loc: tuple[Any, ...]) -> str:
    out = "Bundle"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before"):
            out += f".{part}"
    return out


def validate_bundle(bundle: dict[str, Any]) -> list[Issue]:
    """Issues (errors) found by parsing ``bundle`` with the R4B models; [] when valid."""
    try:
        Bundle.model_validate(bundle)
    except PydanticError as exc:
        return [
            Issue(
                "validation.structure",
                f"{e['msg']} (value of form {shape(e.get('input'))})",
                location=_location(tuple(e["loc"])),
            )
            for e in exc.errors()[:20]
        ]
    except (ValueError, TypeError) as exc:  # fhir.resources raises these for some checks
        return [Issue("validation.structure", str(exc).splitlines()[0], location="Bundle")]
    return []


def _references(node: Any, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            out.append((path + ".reference", ref))
        for key, value in node.items():
            if key != "reference":
                _references(value, f"{path}.{key}", out)
    elif isinstance(node, list):
        for n, item in enumerate(node):
            _references(item, f"{path}[{n}]", out)


def check_references(bundle: dict[str, Any]) -> list[Issue]:
    """Every reference inside the Bundle must resolve to one of its entries' fullUrl."""
    urls = {e.get("fullUrl") for e in bundle.get("entry", [])}
    found: list[tuple[str, str]] = []
    for n, entry in enumerate(bundle.get("entry", [])):
        _references(entry.get("resource"), f"Bundle.entry[{n}].resource", found)
    return [
        Issue(
            "validation.dangling-reference",
            f"reference {ref!r} matches no entry's fullUrl",
            location=where,
        )
        for where, ref in found
        if ref not in urls
    ]
