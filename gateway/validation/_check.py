"""Which profile a resource is checked against, and the per-skeleton memory of the walk."""

from __future__ import annotations

from typing import Any

from ..errors import Issue
from ._definitions import definitions
from ._profiles import Elem, Plans, ProfileWalk, Program, _pruned

__all__ = ["ProfileValidator", "plans"]

_MAX_KNOWN = 50_000
_PLANS: Plans | None = None
_UNSEEN: Any = object()


def plans() -> Plans:
    """The compiled plans of the process (definitions are read once, plans compiled lazily)."""
    global _PLANS
    if _PLANS is None:
        _PLANS = Plans(definitions())
    return _PLANS


class ProfileValidator:
    """Runs plans; remembers the (plan, skeleton) pairs whose structure checks passed."""

    def __init__(self) -> None:
        # (plan, mode, skeleton) → its value checks (None: none)
        self._known: dict[tuple[int, bool, Any], Program | None] = {}

    def plan_for(self, resource: dict[str, Any], profile: str | None) -> Elem | None:
        compiled = _PLANS if _PLANS is not None else plans()
        if profile is not None:
            return compiled.plan(profile)
        declared = (resource.get("meta") or {}).get("profile")
        if isinstance(declared, list):
            for url in declared:
                found = compiled.plan(str(url)) if isinstance(url, str) else None
                if found is not None:
                    return found
        # A resource is held to a gateway profile only when it claims it (or the caller
        # asks): another institution's resource, or an official example, is plain R4.
        return compiled.plan(str(resource.get("resourceType")))

    def validate(
        self,
        resource: dict[str, Any],
        where: str,
        profile: str | None,
        skeleton: Any,
        urls: dict[str, str] | None,
        errors_only: bool = False,
        nested: bool = True,
    ) -> list[Issue]:
        plan = self.plan_for(resource, profile)
        if plan is None:
            if profile is not None:
                return [
                    Issue(
                        "validation.profile-unknown",
                        f"no StructureDefinition with a snapshot for {profile}",
                        location=where,
                    )
                ]
            return []  # no definitions installed for this type: structure only
        key = (id(plan), errors_only, skeleton) if skeleton is not None else None
        known = self._known.get(key, _UNSEEN) if key is not None else _UNSEEN
        walk = ProfileWalk(plans(), resource, known is not _UNSEEN, urls, errors_only)
        walk.nested = nested
        rtype = str(resource.get("resourceType"))
        if known is not _UNSEEN:  # a known skeleton: its structure passed, values checked
            walk.own(plan, resource, rtype, where)
            if known is not None:
                walk.run(known, resource, where)
            return walk.issues
        if key is None:
            walk.item(plan, resource, rtype, where)
            return walk.issues
        recording = walk.record()
        walk.item(plan, resource, rtype, where)
        if not walk.structure_failed:
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            self._known[key] = _pruned(recording)
        return walk.issues
