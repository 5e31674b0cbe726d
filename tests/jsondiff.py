"""Field-by-field comparison of parsed JSON, naming the path of each difference."""

from __future__ import annotations

from typing import Any


def differences(expected: Any, actual: Any, path: str = "$") -> list[str]:
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual), key=str):
            where = f"{path}.{key}"
            if key not in actual:
                out.append(f"{where}: missing (expected {expected[key]!r:.80})")
            elif key not in expected:
                out.append(f"{where}: unexpected {actual[key]!r:.80}")
            else:
                out.extend(differences(expected[key], actual[key], where))
        return out
    if isinstance(expected, list) and isinstance(actual, list):
        out = []
        if len(expected) != len(actual):
            out.append(f"{path}: {len(actual)} items, expected {len(expected)}")
        for n, (e, a) in enumerate(zip(expected, actual, strict=False)):
            out.extend(differences(e, a, f"{path}[{n}]"))
        return out
    if expected != actual:
        return [f"{path}: {actual!r:.80} != expected {expected!r:.80}"]
    return []
