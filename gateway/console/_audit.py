"""The auditor's page: the audit log verified (gateway.audit.verify_log), the latest
signature verification results it recorded, and the year's cross-border transfer
report (gateway audit transfers). Read-only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa

from .. import audit
from ..audit import AuditLog, Verdict, default_checker, verify_live
from ..config import Settings
from ..datafiles import data_dir, load_data_file
from ..network import Network
from ..store import Store, metadata, utcnow

__all__ = ["AuditorView", "auditor_view", "basis_names"]

LATEST = 50


@dataclass
class AuditorView:
    year: int
    verdict: Verdict
    signatures: list[dict[str, Any]]
    transfers: list[audit.TransferRow]  # the year's report, as `gateway audit transfers`


def basis_names(basis: str | None) -> dict[str, str]:
    """A legal basis's name per language (the policy's labels; zh-Hant for Hong Kong)."""
    if not basis:
        return {}
    bases = load_data_file(data_dir("mappings") / "policy" / "labels.yaml").get("bases") or {}
    found = bases.get(basis) or {}
    return {str(k): str(v) for k, v in found.items()}


def _signatures(store: Store) -> list[dict[str, Any]]:
    entries = metadata.tables["audit_entries"]
    c = entries.c
    query = (
        sa.select(c.idx, c.recorded, c.partner, c.canonical)
        .where(c.kind == "signature-verified")
        .order_by(c.idx.desc())
        .limit(LATEST)
    )
    with store.engine.connect() as conn:
        rows = conn.execute(query).all()
    out = []
    for row in rows:
        event = orjson.loads(row.canonical)
        signer = next(
            (
                a["who"]["identifier"]["value"]
                for a in event.get("agent") or []
                if any(c.get("code") == "AUT" for c in (a.get("type") or {}).get("coding", []))
            ),
            "-",
        )
        out.append(
            {
                "index": row.idx,
                "recorded": row.recorded,
                "signer": signer,
                "ok": event.get("outcome") == "0",
                "code": event.get("outcomeDesc") or "",
            }
        )
    return out


def auditor_view(settings: Settings, store: Store, year: int | None = None) -> AuditorView:
    year = year or utcnow().year
    # as `gateway audit verify` does: heads signed by a key the trust store does not
    # vouch for are named, never shown as intact
    verdict = verify_live(AuditLog(store), default_checker(settings))
    rows = audit.transfers(store, year, Network.load(settings.network))  # `audit transfers`
    return AuditorView(year, verdict, _signatures(store), rows)
