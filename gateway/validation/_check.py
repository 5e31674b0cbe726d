"""Which profile a resource is checked against, and the per-skeleton memory of the walk."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..errors import Issue
from ._definitions import definitions
from ._profiles import Elem, Plans, ProfileWalk, Program

__all__ = ["ProfileValidator", "plans"]

_MAX_KNOWN = 50_000
_PLANS: Plans | None = None


def plans() -> Plans:
    """The compiled plans of the process (definitions are read once, plans compiled lazily)."""
    global _PLANS
    if _PLANS is None:
        _PLANS = Plans(definitions())
    return _PLANS


class ProfileValidator:
    """Runs plans; remembers the (plan, skeleton) pairs whose structure checks passed."""

    def __init__(self) -> None:
        # (plan, skeleton) → the warnings its structure checks gave, location after the prefix
        # (plan, mode, skeleton) → its value checks, and the warnings its structure checks
        # gave (with their locations after the prefix)
        self._known: dict[tuple[int, bool, Any], tuple[Program, list[tuple[Issue, str]]]] = {}

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
        known = self._known.get(key) if key is not None else None
        walk = ProfileWalk(plans(), resource, known is not None, urls, errors_only)
        walk.nested = nested
        rtype = str(resource.get("resourceType"))
        if known is not None:
            program, structural = known
            walk.own(plan, resource, rtype, where)
            walk.run(program, resource, where)
            for issue, tail in structural:
                walk.issues.append(replace(issue, location=where + tail))
            return walk.issues
        if key is not None:
            walk.sites = {}
        walk.item(plan, resource, rtype, where)
        if key is not None and not walk.structure_failed:
            if len(self._known) >= _MAX_KNOWN:
                self._known.clear()
            tails = [(i, (i.location or where)[len(where) :]) for i in walk.structural]
            self._known[key] = (walk.program(), tails)
        return walk.issues
