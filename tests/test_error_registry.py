"""Every error code the gateway raises is registered (gateway/errors.yaml), and
docs/errors.md is what the registry generates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import orjson
import pytest

from gateway.errors import Issue, errors_codesystem, errors_markdown, http_status, registry

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = ROOT / "gateway"

# The constructors whose first argument is an error code, and the family each prefixes.
_RAISERS = {
    "IntakeError": "intake",
    "MappingError": "mapping",
    "ValidationError": "validation",
    "ConfigError": "config",
    "StoreError": "store",
    "PolicyError": "policy",
    "SigningError": "signing",
    "GatewayError": None,
    "Issue": None,
}
# A code is a family and a name; every string literal of this form in gateway/ is one
# (codes also travel through helpers such as a reader's _note(code, ...)).
_FAMILIES = "|".join(sorted({code.family for code in registry().values()} - {"internal"}))
_CODE = re.compile(rf"(?:{_FAMILIES})\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# Codes built at run time, by file: the test names every value they can take instead.
_BUILT = {
    "gateway/api/_app.py": {"request.http-404", "request.http-405"},
    "gateway/intake/hl7v2/_er7.py": {
        "intake.too-many-repetitions",
        "intake.too-many-components",
        "intake.too-many-subcomponents",
    },
}


def _raised_codes() -> tuple[dict[str, list[str]], list[str]]:
    """Every code in gateway/ with where it appears, and the places that build a code
    from pieces (f-strings, concatenation) rather than pass one on."""
    codes: dict[str, list[str]] = {}
    built: list[str] = []
    for path in sorted(GATEWAY.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and _CODE.fullmatch(node.value):
                codes.setdefault(node.value, []).append(f"{rel}:{node.lineno}")
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in _RAISERS:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                family = _RAISERS[name]
                code = arg.value
                if family and not code.startswith(family + "."):
                    code = f"{family}.{code}"
                codes.setdefault(code, []).append(f"{rel}:{node.lineno}")
            elif not isinstance(arg, (ast.Name, ast.Attribute)):  # a name passes a code on
                built.append(f"{rel}:{node.lineno}")
    return codes, built


def test_every_raised_code_is_registered() -> None:
    codes, _ = _raised_codes()
    known = registry()
    missing = {code: where for code, where in codes.items() if code not in known}
    assert not missing, f"register these codes in gateway/errors.yaml: {missing}"


def test_codes_built_at_run_time_are_known_sites() -> None:
    _, built = _raised_codes()
    unknown = [site for site in built if site.split(":")[0] not in _BUILT]
    assert not unknown, f"error codes must be literals (or listed in _BUILT): {unknown}"
    for values in _BUILT.values():
        assert values <= set(registry()), values - set(registry())


def test_every_registered_code_is_raised() -> None:
    codes, _ = _raised_codes()
    dynamic = set().union(*_BUILT.values())
    # "internal" is made by the pipeline and the API from the family name itself.
    unused = set(registry()) - set(codes) - dynamic - {"internal"}
    assert not unused, f"registered but never raised (remove from errors.yaml): {unused}"


def test_registry_entries_are_complete() -> None:
    for code in registry().values():
        assert code.meaning and code.stage
        assert 400 <= code.http < 600
        assert code.severity in ("fatal", "error", "warning", "information")


def test_docs_are_generated_from_the_registry() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    assert doc == errors_markdown(), "docs/errors.md is stale: run `make docs`"


def test_the_published_code_system_holds_every_code() -> None:
    published = orjson.loads((ROOT / "profiles" / "CodeSystem-error-code.json").read_bytes())
    assert published == errors_codesystem(), "the CodeSystem is stale: run `make docs`"
    assert {c["code"] for c in published["concept"]} == set(registry())
    issue = Issue("mapping.required", "PID-3 is empty", location="PID-3").to_fhir()
    assert issue["details"]["coding"][0]["system"] == published["url"]


@pytest.mark.parametrize(
    ("codes", "status"),
    [
        (["intake.charset-mismatch"], 400),
        (["mapping.required"], 422),
        (["validation.structure", "mapping.required"], 422),
        (["mapping.required", "internal"], 500),
        (["intake.binary", "mapping.required"], 422),
    ],
)
def test_http_status_comes_from_the_registry(codes: list[str], status: int) -> None:
    assert http_status([Issue(c, "x") for c in codes]) == status


def test_warnings_do_not_set_the_status() -> None:
    issues = [
        Issue("intake.skipped-member", "x", severity="warning"),
        Issue("mapping.required", "y"),
    ]
    assert http_status(issues) == 422
