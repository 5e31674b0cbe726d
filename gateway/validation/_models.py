"""Structural validation with the fhir.resources R4B models, made affordable.

A full ``model_validate`` of a referral Bundle costs ~3.6 ms, which alone would cap the
gateway near 275 messages/s. What the models check splits in two:

* **structure**: which keys exist, list or single value, required elements, choice
  (``value[x]``) rules. It depends only on the resource's *skeleton* (its keys and the
  kinds of their values), and every message of one mapping has one of a handful of
  skeletons;
* **values**: each primitive against its FHIR type (date, dateTime, code, id, uri, ...).

So each resource is checked like this: the first time a skeleton is seen, the full R4B
model validates the resource and the skeleton is remembered; afterwards only the values
are checked, each with the very pydantic validator the model uses for that field (read
from the model's field annotations). Anything unexpected — an unknown key, a value the
primitive validator rejects — falls back to the full model, whose errors are reported.
``tests/validation`` checks that this verdict and ``Bundle.model_validate``'s agree.

What it learns (known skeletons, accepted values) belongs to a :class:`Validator`; each
``Converter`` makes its own. The module functions (``check_bundle``,
``validate_bundle``, ``validate_resource``) use a default instance, for callers
without a converter (report variants, tests). What stays module-level is
derived from the model classes alone (``_fields``, ``_adapter``); the skeleton of a
frozen shared subtree is kept on the subtree itself (``FrozenDict.skeleton``).

fhir.resources' R4B models are structurally identical to R4 for these resources.

Before all this, a ``Validator`` on its default path answers a resource whose *shape* it
has met by construction (``_construct``; docs/validation.md); ``GATEWAY_VALIDATION_PATH``
selects the incremental walk alone, or the reference walk (everything, every time, no
memo) that ``tests/validation/test_construct.py`` holds the others to.
"""

from __future__ import annotations

import os
import re
import typing
from functools import cache
from typing import Any, NamedTuple

import orjson
from fhir.resources.R4B import get_fhir_model_class
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticError

from ..errors import ConfigError, Issue
from ..shared import FrozenDict, FrozenList
from . import _composed, _construct, _messages
from ._check import ProfileValidator, plans
from ._profiles import Elem, ProfileWalk

__all__ = [
    "MODES",
    "Validator",
    "check_bundle",
    "check_references",
    "reference_values",
    "validate_bundle",
    "validate_resource",
]

# How a Validator reaches its verdict (GATEWAY_VALIDATION_PATH, or Validator(mode=)):
# "construct" answers a resource of a known shape from the values its checks read (see
# _construct) and walks the others incrementally; "incremental" walks every resource by
# its skeleton (known skeletons: primitives and the value program only); "reference"
# walks every resource in full with no memo, every time: the verdict the others must
# give, issue for issue.
MODES = ("construct", "incremental", "reference")
MODE_VARIABLE = "GATEWAY_VALIDATION_PATH"
_FAILING = ("error", "fatal")  # severities that fail a record; warnings travel beside it
_MAX_SKELETONS = 50_000  # a few KB each at most; a mapping makes a handful per type
_MAX_CLEAN = 20_000  # reference data (staff, organisations) of a region fits
_PROBE = 64
_REFERENCE = re.compile(rb'"reference":"([^"\\]*)"')  # an escaped one does not match


class _Request(NamedTuple):
    """One resource to validate, as each path (reference, incremental, construct) takes it."""

    model: Any  # its R4B model class
    resource: dict[str, Any]
    where: str  # its location (``Bundle.entry[3].resource``): where its issues start
    profile: str | None  # the profile asked for; None: the one it declares, else base R4
    errors_only: bool
    whole: dict[str, Any] | None  # the Bundle whose shell ``resource`` is


_NEW = tuple.__new__
_UNSEEN: Any = object()
_MODELS: dict[str, Any] = {}


def _model_class(rtype: str) -> Any:
    """The R4B model class of a resource type, None for an unknown type
    (``get_fhir_model_class`` costs microseconds a call: the pipeline asks per resource)."""
    model = _MODELS.get(rtype)
    if model is None:
        try:
            model = get_fhir_model_class(rtype)
        except (KeyError, ValueError):  # fhir.resources 8 raises ValueError for a bad name
            return None
        _MODELS[rtype] = model  # the known types only: a bounded table
    return model


def _location(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after", "function-before"):
            out += f".{part}"
    return out


def _model_issues(model: Any, data: dict[str, Any], prefix: str) -> list[Issue]:
    try:
        model.model_validate(data)
    except PydanticError as exc:  # said in FHIR's words, at FHIRPath locations (_messages)
        return _messages.issues(exc.errors()[:20], model, data, prefix, _model_class)
    # fhir.resources' own validators fail this way on values of the wrong kind (an
    # extension that is a number, a mapping where a string goes): malformed input.
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        return _messages.failure(exc, model, data, prefix, _model_class)
    return []


# -- one walk: the skeleton, and every value checked on the way ----------------------

# ("prim", TypeAdapter, its id) | ("model", class, 0) | ("resource", None, 0)
_Check = tuple[str, Any, int]
_MAX_VALUES = 200_000  # primitive values already accepted, per adapter pair


@cache
def _fields(model: Any) -> dict[str, _Check]:
    """JSON key → how to check its values, for one model class."""
    table: dict[str, _Check] = {}
    for name, info in model.model_fields.items():
        inner, _ = _messages.unwrap(info.annotation)  # Optional[List[X]] → X
        key = info.alias or name
        type_name = getattr(inner, "__name__", "")
        if typing.get_origin(inner) is typing.Annotated or not type_name.endswith("Type"):
            adapter = _adapter(inner)
            table[key] = ("prim", adapter, id(adapter))
        elif type_name in ("ResourceType", "FHIRResourceType"):
            table[key] = ("resource", None, 0)
        else:
            table[key] = ("model", get_fhir_model_class(type_name[: -len("Type")]), 0)
    return table


@cache
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


class _Invalid(Exception):
    """A value the model's own validator rejects, or a key the model does not have."""


class _Walker:
    """Builds a resource's skeleton (keys in order, kinds of values) while checking each
    primitive with the model's validator for its field. Accepted primitives are
    remembered: system URIs, codes and displays repeat in every message."""

    def __init__(self) -> None:
        self.references: list[str] = []  # reference strings met by the walks since reset
        self._accepted: set[tuple[int, type, Any]] = set()

    def skeleton(self, model: Any, data: dict[str, Any]) -> Any:
        # A frozen subtree without references never changes: its skeleton is walked once
        # and kept on it (one holding references is walked every time: the walk collects
        # them). The skeleton of a valid value is a function of the value and the model
        # alone, so it may travel with the value from one validator to another.
        if type(data) is not FrozenDict or data.holds_refs:
            return self._walk(model, data)
        if data.checked_as is model:
            return data.skeleton
        skeleton = self._walk(model, data)  # raises for an invalid value: nothing stored
        data.skeleton, data.checked_as = skeleton, model
        return skeleton

    def _walk(self, model: Any, data: dict[str, Any]) -> Any:
        # The hot loop of the structural check: primitives are checked inline (most
        # values of a resource are), lists without a generator.
        fields = _fields(model)
        accepted = self._accepted
        out: list[Any] = []
        for key, value in data.items():
            if key == "resourceType":
                if not isinstance(value, str):
                    raise _Invalid(key)
                out.append((key, value))
                continue
            check = fields.get(key)
            if check is None:
                raise _Invalid(key)
            prim = check[0] == "prim"
            if not isinstance(value, list):  # most values: one primitive
                if not prim:
                    out.append((key, self._item(check, value)))
                    continue
                if isinstance(value, dict):
                    raise _Invalid(value)
                if key == "reference" and isinstance(value, str):
                    self.references.append(value)
                kind = type(value)
                token = (check[2], kind, value)
                if token not in accepted:
                    self._accept(check[1], value, token)
                out.append((key, kind))
                continue
            kinds = set()
            for item in value:
                if prim:
                    if isinstance(item, (dict, list)):
                        raise _Invalid(item)
                    token = (check[2], type(item), item)
                    if token not in accepted:
                        self._accept(check[1], item, token)
                    kinds.add(type(item))
                else:
                    kinds.add(self._item(check, item))
            out.append((key, "[]", frozenset(kinds)))
        return tuple(out)

    def _accept(self, adapter: TypeAdapter[Any], value: Any, token: tuple[int, type, Any]) -> None:
        try:
            adapter.validate_python(value)
        # fhir.resources' own validators fail so on a value of the wrong kind (see
        # _model_issues): the full model says what is wrong
        except (PydanticError, ValueError, TypeError, AttributeError, KeyError):
            raise _Invalid(value) from None
        if len(self._accepted) >= _MAX_VALUES:
            self._accepted.clear()
        self._accepted.add(token)

    def _item(self, check: _Check, value: Any) -> Any:
        kind, target, ident = check
        if kind == "prim":
            if isinstance(value, (dict, list)):
                raise _Invalid(value)
            token = (ident, type(value), value)
            if token not in self._accepted:
                self._accept(target, value, token)
            return type(value)
        if not isinstance(value, dict):
            raise _Invalid(value)
        if kind == "model":
            return self.skeleton(target, value)
        return self.skeleton(get_fhir_model_class(str(value.get("resourceType", ""))), value)


class _Shape:
    """One known skeleton, by identity: what the profile check keys its memory on. A
    skeleton is a deep tuple; hashing and comparing it once per resource is enough."""

    __slots__ = ()


class _Skeletons:
    def __init__(self) -> None:
        self._known: dict[Any, _Shape] = {}
        self.walker = _Walker()
        self.complete = True  # every resource since reset was walked to the end

    def validate(
        self, model: Any, data: dict[str, Any], prefix: str
    ) -> tuple[list[Issue], _Shape | None]:
        """The model's issues, and the resource's skeleton (None when unknown)."""
        try:
            key = (model, self.walker.skeleton(model, data))
        except (_Invalid, KeyError, ValueError):
            key = None
            self.complete = False
        if key is not None:
            known = self._known.get(key)
            if known is not None:
                return [], known
        issues = _model_issues(model, data, prefix)
        if issues or key is None:
            return issues, None
        shape = _Shape()
        if len(self._known) < _MAX_SKELETONS:
            self._known[key] = shape
        return [], shape


def _entry_types(bundle: dict[str, Any]) -> tuple[Any, ...] | None:
    """Each entry's resource type (None: no resource), which a shell's verdict reads; None
    when an entry or a resource is not an object, or a type not a string."""
    entries = bundle.get("entry")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        return None
    out: list[Any] = []
    for entry in entries:
        if not isinstance(entry, dict):
            return None
        resource = entry.get("resource", _NONE)
        if resource is _NONE:
            out.append(None)
        elif isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
            out.append(resource["resourceType"])
        else:
            return None
    return tuple(out)


_NONE = object()
_REQUESTED = ("batch", "transaction", "history")  # bdl-3: entries carry a request
_RESPONDED = ("batch-response", "transaction-response", "history")  # bdl-4: a response


class _Entries:
    """What one pass over a Bundle's entries finds for the Bundle's own checks."""

    __slots__ = ("dicts", "full", "inside", "requests", "responses", "shell", "urls")

    def __init__(self, raw: Any) -> None:
        entries = raw if isinstance(raw, list) else []
        self.shell: list[Any] = []  # the entries without their resources: the shell's
        self.urls: dict[str, str] = {}  # fullUrl → the type of its entry's resource
        self.full: list[str] = []  # every string fullUrl (bdl-7)
        self.dicts = self.requests = self.responses = 0  # entries; with request, response
        types: list[Any] | None = [] if raw is None or isinstance(raw, list) else None
        for entry in entries:
            if not isinstance(entry, dict):
                self.shell.append(entry)
                types = None
                continue
            own = dict(entry)
            resource = own.pop("resource", _NONE)
            self.shell.append(own)
            self.dicts += 1
            self.requests += "request" in entry
            self.responses += "response" in entry
            url = entry.get("fullUrl")
            if isinstance(url, str):
                self.full.append(url)
                if isinstance(resource, dict):
                    self.urls[url] = str(resource.get("resourceType"))
            if types is None:
                continue
            if resource is _NONE:
                types.append(None)
            elif isinstance(resource, dict) and isinstance(resource.get("resourceType"), str):
                types.append(resource["resourceType"])
            else:
                types = None
        # each entry's resource type, which a shell's verdict reads (see _entry_types)
        self.inside = tuple(types) if types is not None else None


def _keepable(issues: list[Issue]) -> bool:
    """Whether a verdict is a function of its shape's (or Bundle plan's) key: not when the
    model refused the resource or a part (the slow path stops there)."""
    return not any(i.code == "validation.structure" for i in issues)


def _bundle_invariants(bundle: dict[str, Any], entries: list[Any], found: _Entries) -> list[Issue]:
    """Invariants bdl-3, bdl-4 and bdl-7, natively (see invariants.yaml)."""
    out = []
    kind = bundle.get("type")
    for key, name, kinds, count in (
        ("bdl-3", "request", _REQUESTED, found.requests),
        ("bdl-4", "response", _RESPONDED, found.responses),
    ):
        # every entry that is an object has it, or none has
        if count != (found.dicts if kind in kinds else 0):
            out.append(
                Issue(
                    "validation.invariant",
                    f"constraint {key} not met: entry.{name} mandatory for {'/'.join(kinds)}, "
                    "otherwise prohibited",
                    location="Bundle",
                )
            )
    if len(set(found.full)) == len(found.full):
        return out  # distinct fullUrls: distinct (fullUrl, versionId) pairs
    return out + _bdl7(bundle, entries)


def _bdl7(bundle: dict[str, Any], entries: list[Any]) -> list[Issue]:
    """Invariant bdl-7: fullUrl + versionId unique."""
    if bundle.get("type") == "history":
        return []
    seen: set[tuple[str, Any]] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("fullUrl"), str):
            continue
        resource = entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, dict) else None
        key = (entry["fullUrl"], meta.get("versionId") if isinstance(meta, dict) else None)
        if key in seen:
            return [
                Issue(
                    "validation.invariant",
                    "constraint bdl-7 not met: FullUrl must be unique in a bundle, or else "
                    "entries with the same fullUrl must have different meta.versionId",
                    location="Bundle",
                )
            ]
        seen.add(key)
    return []


class Validator:
    """Structure and reference checks for Bundles, with what it has learnt so far.

    Each ``Converter`` owns one, so nothing learnt while converting is shared through
    the module; the module functions below use a default instance.
    """

    def __init__(self, mode: str | None = None) -> None:
        mode = mode or os.environ.get(MODE_VARIABLE) or "construct"
        if mode not in MODES:
            raise ConfigError(
                "bad-setting", f"{MODE_VARIABLE} must be one of {', '.join(MODES)}, not {mode!r}"
            )
        self.mode = mode
        self.shapes = _construct.Shapes()
        self._skeletons = _Skeletons()
        self._profiles = ProfileValidator()
        self._clean: set[tuple[Any, ...]] = set()  # valid resources by content (see below)
        self._memo_stats: dict[str, list[int]] = {}
        self._urls: dict[str, str] | None = None  # fullUrl → resourceType, in a Bundle
        self._inside: tuple[Any, ...] | None = None  # its entries' types (_entry_types)
        self.bundles = _composed.Bundles()  # check_bundle's plans by Bundle shape
        self.by_bundle = True  # check_bundle by the Bundle's plan first (construct only)

    def validate_resource(
        self,
        resource: dict[str, Any],
        prefix: str | None = None,
        *,
        profile: str | None = None,
        all_issues: bool = False,
    ) -> list[Issue]:
        """Errors in ``resource``: the R4B model's (structure) and the profile's; [] when
        valid. ``profile`` is a canonical URL; None means the profile the resource declares
        in ``meta.profile``, else the base R4 definition. ``all_issues`` adds the warnings
        and information issues ($validate)."""
        found = self._resource_issues(resource, prefix, profile, not all_issues)
        return found if all_issues else [i for i in found if i.severity in _FAILING]

    def _resource_issues(
        self,
        resource: dict[str, Any],
        prefix: str | None,
        profile: str | None,
        errors_only: bool,
        whole: dict[str, Any] | None = None,
    ) -> list[Issue]:
        """Structure of ``resource``, then its profile; ``whole``: the Bundle whose shell
        ``resource`` is, which the profile sees with its entries' resources (slices by
        resource type) but without walking them (they are validated one by one)."""
        rtype = resource.get("resourceType")
        where = prefix or str(rtype)
        model = _MODELS.get(rtype) if type(rtype) is str else None  # (most: known)
        if model is None and (model := _model_class(str(rtype))) is None:
            # not walked: the references inside it were not collected, so check_bundle
            # must look for them (``_walked``)
            self._skeletons.complete = False
            return [
                Issue("validation.structure", f"unknown resourceType {rtype!r}", location=where)
            ]
        # tuple.__new__: the request without NamedTuple's Python-level __new__ (per resource)
        req = _NEW(_Request, (model, resource, where, profile, errors_only, whole))
        if self.mode == "reference":
            return self._reference_issues(req)
        if self.mode == "construct":
            return self._constructed(req)
        return self._incremental(req)

    def _reference_issues(self, req: _Request) -> list[Issue]:
        """The full verdict, nothing remembered: the model validates the whole resource,
        the profile's walk visits every element and runs every check."""
        model, resource, where, profile, errors_only, whole = req
        issues = _model_issues(model, resource, where)
        if issues:
            return issues
        target = whole if whole is not None else resource
        plan = self._profiles.plan_for(target, profile)
        if plan is None:
            if profile is None:
                return []
            message = f"no StructureDefinition with a snapshot for {profile}"
            return [Issue("validation.profile-unknown", message, location=where)]
        walk = ProfileWalk(plans(), target, False, self._urls, errors_only)
        walk.nested = whole is None
        walk.memo = False
        walk.item(plan, target, str(target.get("resourceType")), where)
        return walk.issues

    def _constructed(self, req: _Request) -> list[Issue]:
        """The verdict by construction (see _construct): a resource met before whole is
        answered from its content; one of a known shape from its bound values, reference
        targets and residual invariants; the others are validated incrementally, and their
        verdict remembered. ``req.whole``: the Bundle whose shell ``req.resource`` is (its
        entries' resource types are keyed)."""
        # What answers a resource the shapes cannot: the incremental walk when only errors
        # are asked (the pipeline); with warnings ($validate, rare), the reference walk.
        # Both give the reference's issues in its order (tests/validation/test_issue_order).
        slow = self._incremental if req.errors_only else self._reference_issues
        resource, whole = req.resource, req.whole
        try:  # (inline: _construct.dump, once per resource)
            content = orjson.dumps(resource, option=_construct.OPTIONS)
        except TypeError:  # not plain JSON data (a datetime, a non-string key)
            return slow(req)
        shapes = self.shapes
        urls = self._urls or {}
        exact = None
        if whole is None:
            # By content, before the plan: equal JSON declares the same profiles. Not a
            # shell (its residual invariants read its entries), nor a type whose resources
            # are new every time (the patient, the order).
            rtype = resource["resourceType"]  # a str: _resource_issues found its model
            if shapes.worth(rtype):
                exact = (content, req.profile, req.errors_only)
                known = shapes.exact_answer(exact, urls, rtype)
                if known is not None:
                    self._skeletons.walker.references.extend(known[0])
                    return _construct.answer(known[1], req.where) if known[1] else []
        target = whole if whole is not None else resource
        if "meta" in target and not isinstance(target["meta"], dict):
            return slow(req)  # plan_for's
        plan = self._profiles.plan_for(target, req.profile)
        if plan is None:
            return slow(req)
        inside: tuple[Any, ...] = ()
        if whole is not None:
            # the shell's own entries' types: validate_bundle's survey, else found now
            types = self._inside if self._inside is not None else _entry_types(whole)
            if types is None:
                return slow(req)
            inside = types
        found = _construct.split(content)
        if found is None:
            return slow(req)
        tails, issues = self._by_shape(req, plan, content, found, inside, urls)
        if exact is not None and tails is not None:
            shapes.remember_exact(exact, tails, urls)
        return issues

    def _by_shape(
        self,
        req: _Request,
        plan: Elem,
        content: bytes,
        found: tuple[Any, list[bytes], Any],
        inside: tuple[Any, ...],
        urls: dict[str, str],
    ) -> tuple[_construct.Tails | None, list[Issue]]:
        """The verdict of a resource from its shape (``found``: _construct.split's of its
        JSON ``content``), and the same as tails after its location when it is remembered.
        A shape or a verdict not met before is learnt from the slow path's verdict."""
        shapes = self.shapes
        shape_bytes, leaves, decode = found
        target = req.whole if req.whole is not None else req.resource
        key = (shape_bytes, id(plan), req.errors_only, inside)
        shape = shapes.known.get(key, _UNSEEN)
        slow = self._incremental if req.errors_only else self._reference_issues
        if shape is _UNSEEN:  # a new shape: the slow verdict, then the analysis
            issues = slow(req)
            if not _keepable(issues):
                return None, issues  # a shape is learnt from a resource the model accepts
            shape = _construct.analyse(
                plans(),
                plan,
                req.model,
                req.resource,
                leaves,
                req.errors_only,
                _fields,
                req.whole,
            )
            shapes.add(key, shape)
            if shape is None or not shapes.free_ok(shape, leaves, decode):
                return None, issues
            refs = [decode(raw) for raw in shape.refs(leaves)] if shape.refs else []
            verdict_key = shapes.key(shape, target, leaves, urls, refs, content)
            return shapes.remember(shape, verdict_key, issues, req.where), issues
        if shape is None or not shapes.free_ok(shape, leaves, decode):
            return None, slow(req)
        refs = [decode(raw) for raw in shape.refs(leaves)] if shape.refs else []
        verdict_key = shapes.key(shape, target, leaves, urls, refs, content)
        tails = shape.verdicts.get(verdict_key)
        if tails is None:  # values not met before: the slow verdict, remembered
            issues = slow(req)
            if not _keepable(issues):
                return None, issues
            return shapes.remember(shape, verdict_key, issues, req.where), issues
        shapes.hits += 1
        self._skeletons.walker.references.extend(refs)
        return tails, _construct.answer(tails, req.where) if tails else []

    def _incremental(self, req: _Request) -> list[Issue]:
        """The skeleton-keyed walk of _check and this module, with its memos."""
        model, resource, where, profile, errors_only, whole = req
        rtype = resource.get("resourceType")
        # Reference data (organisations, staff) recurs in every message as new dicts of the
        # same content: a valid one's verdict is a function of its content and of what its
        # references resolve to in the Bundle, so it is remembered by those.
        # A type whose resources are new in every message (the patient, the order) stops
        # being looked up after a while; it is tried again now and then.
        stats = self._memo_stats.setdefault(str(rtype), [0, 0])  # [tries, hits]
        worth = stats[0] < _PROBE or stats[1] * 8 >= stats[0] or stats[0] % _PROBE == 0
        stats[0] += 1
        worth = worth and whole is None  # a shell's verdict depends on its entries too
        memo = self._content_key(resource, profile, errors_only) if worth else None
        if memo is not None and memo[0] in self._clean:
            stats[1] += 1
            self._skeletons.walker.references.extend(memo[1])
            return []
        issues, skeleton = self._skeletons.validate(model, resource, where)
        if issues:
            return issues  # the profile walk assumes a structurally valid resource
        known: Any = skeleton
        if whole is not None and skeleton is not None:
            # the shell's walk sees its entries' resources (their presence, their types)
            inside = _entry_types(whole)
            known = (skeleton, inside) if inside is not None else None
        issues = self._profiles.validate(
            whole if whole is not None else resource,
            where,
            profile,
            known,
            self._urls,
            errors_only,
            nested=whole is None,
        )
        if memo is not None and not issues:
            if len(self._clean) >= _MAX_CLEAN:
                self._clean.clear()
            self._clean.add(memo[0])
        return issues

    def _content_key(
        self, resource: dict[str, Any], profile: str | None, errors_only: bool
    ) -> tuple[tuple[Any, ...], list[str]] | None:
        """The key of a resource's verdict by content, and its references; None when its
        JSON cannot be made or a reference in it is escaped (not the string itself)."""
        try:
            content = orjson.dumps(resource)
        except TypeError:
            return None
        raw = _REFERENCE.findall(content)
        if len(raw) != content.count(b'"reference":'):  # one is escaped, or not a string
            return None
        refs = [ref.decode() for ref in raw]
        urls = self._urls or {}
        return (profile, errors_only, content, tuple(urls.get(r) for r in refs)), refs

    def check_bundle(
        self, bundle: dict[str, Any], validate: bool = True, profile: str | None = None
    ) -> list[Issue]:
        """Reference integrity, and the R4B models' and profiles' verdict when ``validate``
        (``profile``: the Bundle's own, else the one it declares, else base R4).

        The validating walk collects the references it meets (frozen subtrees without
        references are skipped), so the separate reference walk runs only when that walk
        stopped early or found a reference to place in an error.
        """
        if not validate:
            return check_references(bundle)
        if self.mode == "reference":
            return self.validate_bundle(bundle, profile=profile) + check_references(bundle)
        if self.mode == "construct" and self.by_bundle:
            found = self._by_plan(bundle, profile)
            if found is not None:
                return found
        return self._walked(bundle, profile)

    def _walked(self, bundle: dict[str, Any], profile: str | None) -> list[Issue]:
        """check_bundle's verdict resource by resource (construct, incremental)."""
        skeletons = self._skeletons
        walker = skeletons.walker
        walker.references = []
        skeletons.complete = True
        issues = self.validate_bundle(bundle, profile=profile)
        urls = {e.get("fullUrl") for e in bundle.get("entry", []) if isinstance(e, dict)}
        if not skeletons.complete or any(ref not in urls for ref in walker.references):
            issues += check_references(bundle)
        return issues

    def _by_plan(self, bundle: dict[str, Any], profile: str | None) -> list[Issue] | None:
        """check_bundle's verdict from the plan of the Bundle's shape (_composed), learnt
        from the per-resource path the first time the shape is met; None when no plan can
        answer (the caller walks it resource by resource)."""
        bundles = self.bundles
        content: bytes | None = None  # the Bundle's JSON, when it was split whole
        found = _composed.split_entries(bundle, bundles.splits)
        if found is None:  # not of the form split_entries takes: the whole JSON
            content = _construct.dump(bundle)
            found = _construct.split(content) if content is not None else None
            if found is None:
                return None
        shape_bytes, leaves, decode = found
        # the plan of this shape under the profile plans its parts choose (_composed.choosers)
        chooser = bundles.chooser((shape_bytes, profile), bundle, len(leaves))
        key = (shape_bytes, profile, chooser(leaves))
        plan = bundles.plans.get(key, _UNSEEN)
        if plan is None:
            return None
        if plan is _UNSEEN:
            issues = self._walked(bundle, profile)
            if bundles.retry(key):
                plan = self._compose(bundle, profile, leaves)
                if plan is not _UNSEEN:
                    bundles.add(key, plan)
            if plan is not None and plan is not _UNSEEN:
                verdict_key = self._plan_key(plan, bundle, content, leaves, decode)
                if verdict_key is not None and _keepable(issues):
                    bundles.remember(plan, verdict_key, issues)
            return issues
        verdict_key = self._plan_key(plan, bundle, content, leaves, decode)
        if verdict_key is None:
            return None
        verdict = plan.verdicts.get(verdict_key)
        if verdict is None:
            issues = self._walked(bundle, profile)
            if _keepable(issues):
                bundles.remember(plan, verdict_key, issues)
            return issues
        bundles.hits += 1
        return list(verdict)

    def _plan_key(
        self,
        plan: _composed.Plan,
        bundle: dict[str, Any],
        content: bytes | None,
        leaves: list[bytes],
        decode: Any,
    ) -> Any:
        """What the verdict of a Bundle of ``plan``'s shape depends on (see _composed);
        None when a free leaf fails its validator or the references are not all to
        entries (distinct fullUrls) or conditional."""
        if not self.shapes.free_ok(plan.shape, leaves, decode):
            return None
        found = _composed.resolved(plan, leaves, decode, _CONDITIONAL.match)
        if found is None:
            return None
        # the bound leaves as one bytes (split's leaves hold no NUL: orjson escapes it), which
        # hashes and compares in one pass where a tuple would take a step per leaf
        bound = b"\x00".join(plan.shape.bound(leaves))
        residual = _composed.outcomes(plan, bundle, content, leaves) if plan.residual else ()
        return (bound, found, residual)

    def _compose(self, bundle: dict[str, Any], profile: str | None, leaves: list[bytes]) -> Any:
        """The plan of a Bundle's shape (``leaves``: its split's) from the shapes of its
        shell and resources, which the per-resource path has just met: a Plan; None when
        the shape holds what no plan can place; _UNSEEN when a part's shape is not known
        (not learnt yet)."""
        raw = bundle.get("entry")
        if not isinstance(raw, list):
            return None
        # the whole JSON's shape (the plan looks for needles in it), whichever split keyed it
        content = _construct.dump(bundle)
        whole = _construct.split(content) if content is not None else None
        if whole is None:
            return None
        found = _Entries(raw)
        if found.inside is None or found.dicts != len(raw):
            return None
        shell = dict(bundle)
        shell["entry"] = found.shell
        # (its place in the Bundle, its JSON data, its plan, its entries' types: the shell's)
        parts: list[tuple[_composed.Path, dict[str, Any], Elem | None, tuple[Any, ...]]] = [
            ((), shell, self._profiles_plan(bundle, profile), found.inside)
        ]
        for n, entry in enumerate(raw):
            resource = entry.get("resource", _NONE)
            if isinstance(resource, dict):
                where = ("entry", n, "resource")
                parts.append((where, resource, self._profiles_plan(resource, None), ()))
        components = []
        for root, data, plan, inside in parts:
            shape = self._known_shape(data, plan, inside)
            if shape is None or shape is _UNSEEN:
                return shape
            components.append(_composed.Component(root, shape, shape.at))
        return _composed.compose(bundle, whole[0], leaves, components)

    def _profiles_plan(self, target: dict[str, Any], profile: str | None) -> Elem | None:
        if "meta" in target and not isinstance(target["meta"], dict):
            return None  # plan_for's
        return self._profiles.plan_for(target, profile)

    def _known_shape(self, data: dict[str, Any], plan: Elem | None, inside: Any) -> Any:
        """The shape _by_shape learnt for a part (None: refused; _UNSEEN: none)."""
        content = _construct.dump(data)
        found = _construct.split(content) if content is not None and plan is not None else None
        if found is None:
            return None
        shape = self.shapes.known.get((found[0], id(plan), True, inside), _UNSEEN)
        return None if shape is not _UNSEEN and shape is not None and shape.at is None else shape

    def validate_bundle(
        self, bundle: dict[str, Any], *, all_issues: bool = False, profile: str | None = None
    ) -> list[Issue]:
        """Errors found in ``bundle`` by the R4B models and the profiles; [] when valid
        (``all_issues``: with the warnings and information issues).

        The Bundle's own elements and each entry's resource are checked separately, so a
        new mix of entries never forces a full re-validation of resources already known.
        """
        raw = bundle.get("entry")
        found = _Entries(raw)
        shell = dict(bundle)
        if isinstance(raw or [], list):  # an absent or empty entry too: the shell's is []
            shell["entry"] = found.shell
        entries = raw if isinstance(raw, list) else []
        self._urls = found.urls
        self._inside = found.inside
        try:
            issues = self._resource_issues(shell, "Bundle", profile, not all_issues, bundle)
            if not any(i.code == "validation.structure" for i in issues):
                issues = _bundle_invariants(bundle, entries, found) + issues
            for n, entry in enumerate(entries):
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(resource, dict):
                    where = f"Bundle.entry[{n}].resource"
                    issues += self._resource_issues(resource, where, None, not all_issues)
        finally:
            self._urls = None
            self._inside = None
        return issues if all_issues else [i for i in issues if i.severity in _FAILING]

    def check_references(self, bundle: dict[str, Any]) -> list[Issue]:
        return check_references(bundle)


_DEFAULT: Validator | None = None


def _default() -> Validator:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Validator()
    return _DEFAULT


def validate_resource(
    resource: dict[str, Any],
    prefix: str | None = None,
    *,
    profile: str | None = None,
    all_issues: bool = False,
) -> list[Issue]:
    """:meth:`Validator.validate_resource` of the default validator."""
    return _default().validate_resource(resource, prefix, profile=profile, all_issues=all_issues)


def check_bundle(
    bundle: dict[str, Any], validate: bool = True, profile: str | None = None
) -> list[Issue]:
    """:meth:`Validator.check_bundle` of the default validator."""
    return _default().check_bundle(bundle, validate, profile)


def validate_bundle(
    bundle: dict[str, Any], *, all_issues: bool = False, profile: str | None = None
) -> list[Issue]:
    """:meth:`Validator.validate_bundle` of the default validator."""
    return _default().validate_bundle(bundle, all_issues=all_issues, profile=profile)


def reference_values(node: Any, out: list[str]) -> None:
    """Append every ``reference`` string inside ``node`` to ``out``."""
    kind = type(node)
    if (kind is FrozenDict or kind is FrozenList) and not node.holds_refs:
        return  # a frozen subtree that holds no reference (a memoised pure fragment)
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            out.append(ref)
        for value in node.values():
            if isinstance(value, (dict, list)):
                reference_values(value, out)
    elif isinstance(node, list):
        for item in node:
            reference_values(item, out)


def _locate(node: Any, path: str, wanted: str, out: list[str]) -> None:
    if isinstance(node, dict):
        if node.get("reference") == wanted:
            out.append(path + ".reference")
        for key, value in node.items():
            _locate(value, f"{path}.{key}", wanted, out)
    elif isinstance(node, list):
        for n, item in enumerate(node):
            _locate(item, f"{path}[{n}]", wanted, out)


# A conditional reference (ServiceRequest?identifier=system|value) names a resource made
# by another conversion (the order behind a study); the receiving server resolves it when
# it processes the transaction (FHIR R4 transaction rules, 3.1.0.11.2 / http.html#trules).
_CONDITIONAL = re.compile(r"[A-Z][A-Za-z]+\?[a-z][a-z0-9_:.-]*=[^\s]+\Z")


def check_references(bundle: dict[str, Any]) -> list[Issue]:
    """Every reference inside the Bundle resolves to one of its entries' fullUrl, or is a
    conditional reference to a resource outside it."""
    entries = bundle.get("entry", [])
    urls = {e.get("fullUrl") for e in entries}
    found: list[str] = []
    reference_values([e.get("resource") for e in entries], found)
    dangling = sorted({ref for ref in found if ref not in urls and not _CONDITIONAL.match(ref)})
    issues = []
    for ref in dangling:  # rare: only now are the paths worth building
        places: list[str] = []
        for n, entry in enumerate(entries):
            _locate(entry.get("resource"), f"Bundle.entry[{n}].resource", ref, places)
        issues += [
            Issue(
                "validation.dangling-reference",
                f"reference {ref!r} matches no entry's fullUrl",
                location=where,
            )
            for where in places
        ]
    return issues
