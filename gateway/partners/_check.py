"""``gateway partners check``: is a partner reachable, does it take the gateway's
credentials, and does its CapabilityStatement promise what the gateway sends?"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from ..config import Settings
from ..datafiles import load_data_file
from ..errors import GatewayError
from ..network import Network
from ._auth import (
    PartnerAuthError,
    SmartAuth,
    exposed_credentials,
    missing_credentials,
    partner_client,
)
from ._config import Partner
from ._naming import names_institution

__all__ = ["Check", "PartnerReport", "check_partner", "sent_types"]

_FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Check:
    name: str  # config | reachable | fhir-version | writes | types | auth
    ok: bool
    detail: str


@dataclass(slots=True)
class PartnerReport:
    partner: str
    base: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def line(self) -> str:
        """One line: OK with what was found, or FAIL with every failed check."""
        if self.ok:
            said = ", ".join(c.detail for c in self.checks)
            return f"OK    {self.partner}  {self.base}  {said}"
        failed = "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)
        return f"FAIL  {self.partner}  {self.base}  {failed}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.partner,
            "endpoint": self.base,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }


def sent_types(settings: Settings) -> list[str]:
    """The resource types the gateway's Bundles hold: those of the mappings' resource
    templates, those ``writes.yaml`` says how to write (Task: referral status), and
    Provenance (signatures, the policy's record of a transfer)."""
    found = {"Provenance"}
    writes = settings.mappings / "writes.yaml"
    if writes.is_file():
        raw = load_data_file(writes)
        found |= {str(t) for t in (raw.get("types") or {})} if isinstance(raw, Mapping) else set()
    for path in sorted(settings.mappings.glob("*/resources/*.yaml")):
        raw = load_data_file(path)
        if isinstance(raw, Mapping) and isinstance(raw.get("resourceType"), str):
            found.add(raw["resourceType"])
    return sorted(found)


def check_partner(
    partner: Partner,
    settings: Settings,
    types: Sequence[str],
    client: httpx.Client | None = None,
) -> PartnerReport:
    report = PartnerReport(partner.key, partner.base)
    missing = missing_credentials(partner)
    if missing:  # before reachability: a partner that answers still could not be sent to
        report.checks.append(Check("config", False, f"no such file: {'; '.join(missing)}"))
        return report
    exposed = exposed_credentials(partner)
    if exposed:  # refused at the first send too: said before anything is asked
        report.checks.append(Check("config", False, "; ".join(exposed)))
        return report
    try:
        client = client or partner_client(partner, settings)
    except GatewayError as exc:
        report.checks.append(Check("config", False, exc.issue.message))
        return report
    with client:
        capabilities = _metadata(client, report)
        if capabilities is None:
            return report
        _capabilities(capabilities, partner, types, report)
        if isinstance(client.auth, SmartAuth) and not _identity(client.auth, settings, report):
            return report
        _auth(client, partner, types, report)
    return report


def _metadata(client: httpx.Client, report: PartnerReport) -> dict[str, Any] | None:
    """GET metadata (no credentials: R4 lets anyone read it)."""
    try:
        answer = client.get("metadata", auth=None, headers={"Accept": _FHIR_JSON})
    except httpx.TransportError as exc:
        report.checks.append(Check("reachable", False, f"no answer ({_why(exc)})"))
        return None
    if answer.status_code != 200:
        report.checks.append(Check("reachable", False, f"GET metadata: HTTP {answer.status_code}"))
        return None
    try:
        found = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        found = None
    if not isinstance(found, dict) or found.get("resourceType") != "CapabilityStatement":
        report.checks.append(Check("reachable", False, "GET metadata: not a CapabilityStatement"))
        return None
    return found


def _capabilities(
    cap: dict[str, Any], partner: Partner, types: Sequence[str], report: PartnerReport
) -> None:
    version = str(cap.get("fhirVersion") or "none")
    report.checks.append(
        Check("fhir-version", True, f"FHIR {version}")
        if version.startswith("4.0.")
        else Check("fhir-version", False, f"serves FHIR {version}; the gateway writes 4.0.x")
    )
    rests = [r for r in cap.get("rest") or [] if isinstance(r, dict)]
    rest = next((r for r in rests if r.get("mode") == "server"), {})
    kinds = {str(i.get("code")) for i in rest.get("interaction") or [] if isinstance(i, dict)}
    report.checks.append(
        Check("writes", True, partner.write)
        if partner.write in kinds
        else Check("writes", False, f"its CapabilityStatement has no {partner.write} interaction")
    )
    present = {str(r.get("type")) for r in rest.get("resource") or [] if isinstance(r, dict)}
    missing = [t for t in types if t not in present]
    report.checks.append(
        Check("types", False, f"not supported: {', '.join(missing)}")
        if missing
        else Check("types", True, f"{len(types)} resource types")
    )


def _identity(auth: SmartAuth, settings: Settings, report: PartnerReport) -> bool:
    """The key's certificate must name the institution the client_id names (when it
    names one), as the token endpoint checks (docs/partners.md)."""
    try:
        signer = auth.signer()
    except GatewayError as exc:
        report.checks.append(Check("auth", False, exc.issue.message))
        return False
    inst = Network.load(settings.network).institution(auth.client_id)
    if inst is not None and not names_institution(signer.chain[0], inst):
        report.checks.append(
            Check(
                "auth",
                False,
                f"the signing certificate ({signer.name}) does not name institution "
                f"{auth.client_id}, the client_id: the token endpoint would refuse it",
            )
        )
        return False
    return True


def _auth(
    client: httpx.Client, partner: Partner, types: Sequence[str], report: PartnerReport
) -> None:
    """Credentials, then one search with them (a count: no resource is read)."""
    kind = partner.auth.type
    said = f"auth {kind}"
    if isinstance(client.auth, SmartAuth):
        try:
            _, lifetime = client.auth.token(client)
        except PartnerAuthError as exc:
            report.checks.append(Check("auth", False, exc.issue.message))
            return
        except httpx.TransportError as exc:
            report.checks.append(Check("auth", False, f"token endpoint: no answer ({_why(exc)})"))
            return
        said = f"auth smart (token for {client.auth.client_id}, {lifetime:.0f} s)"
    probe = f"{types[0] if types else 'Patient'}?_summary=count"
    try:
        answer = client.get(probe, headers={"Accept": _FHIR_JSON})
    except PartnerAuthError as exc:
        report.checks.append(Check("auth", False, exc.issue.message))
        return
    except httpx.TransportError as exc:
        report.checks.append(Check("auth", False, f"GET {probe}: no answer ({_why(exc)})"))
        return
    if answer.status_code in (401, 403):
        refused = f"the partner refused the {kind} credentials (HTTP {answer.status_code})"
        report.checks.append(Check("auth", False, refused))
    elif not 200 <= answer.status_code < 300:
        report.checks.append(Check("auth", False, f"GET {probe}: HTTP {answer.status_code}"))
    else:
        report.checks.append(Check("auth", True, said))


def _why(exc: Exception) -> str:
    text = str(exc).split("\n")[0][:160]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
