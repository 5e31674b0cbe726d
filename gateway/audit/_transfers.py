"""``gateway audit transfers``: per recipient and legal basis, the records and distinct
individuals that crossed the boundary in a year, from the decisions the policy stage
stores (read-only here) and the audit log's successful deliveries; labels in Chinese
and English (labels.yaml, and the policy's names of legal bases)."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
import yaml

from ..datafiles import data_dir, load_data_file
from ..network import Network
from ..store import Store
from ._log import AuditLog
from ._tables import entries

__all__ = ["TransferRow", "render", "transfers"]

LANGS = ("zh-Hans", "en")


@cache
def _labels() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(
        Path(__file__).with_name("labels.yaml").read_text(encoding="utf-8")
    )
    return data


def label(group: str, key: str) -> dict[str, str]:
    found = _labels().get(group, {}).get(key)
    return dict(found) if found else {lang: key for lang in LANGS}


def basis_name(basis: str | None) -> dict[str, str]:
    if not basis:
        return label("report", "none")
    bases = load_data_file(data_dir("mappings") / "policy" / "labels.yaml").get("bases") or {}
    found = bases.get(basis)
    return (
        {lang: str(found.get(lang, basis)) for lang in LANGS}
        if found
        else {lang: basis for lang in LANGS}
    )


@dataclass
class TransferRow:
    partner: str
    basis: str | None
    records: set[str] = field(default_factory=set)
    people: set[str] = field(default_factory=set)
    delivered: int = 0
    names: dict[str, str] = field(default_factory=dict)  # the partner's, per language

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "partner_name": self.names,
            "basis": self.basis,
            "basis_name": basis_name(self.basis),
            "records": len(self.records),
            "individuals": len(self.people),
            "delivered": self.delivered,
        }


def transfers(store: Store, year: int, network: Network | None = None) -> list[TransferRow]:
    """The year's rows, sorted by partner and basis."""
    start, end = dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)
    rows: dict[tuple[str, str | None], TransferRow] = {}

    def row(partner: str, basis: str | None) -> TransferRow:
        key = (partner, basis)
        if key not in rows:
            rows[key] = TransferRow(partner, basis)
        return rows[key]

    metadata = sa.MetaData()
    AuditLog(store).flush()  # events deferred on this store count too
    with store.engine.connect() as conn:
        if sa.inspect(conn).has_table("policy_decisions"):
            decisions = sa.Table("policy_decisions", metadata, autoload_with=conn)
            c = decisions.c
            query = sa.select(c.id, c.message_id, c.recipient, c.basis, c.patients).where(
                c.decided_at >= start,
                c.decided_at < end,
                c.outcome.in_(("allow", "allow-with-changes")),
                c.current.is_(True),
            )
            for found in conn.execute(query):
                target = row(found.recipient, found.basis)
                target.records.add(f"message/{found.message_id or 'decision-' + str(found.id)}")
                target.people.update(str(p) for p in orjson.loads(found.patients or "[]"))
        deliveries = _deliveries(conn, start, end)
    for (partner, basis), count in deliveries.items():
        row(partner, basis).delivered += count
    for made in rows.values():
        inst = network.find(made.partner) if network else None
        made.names = {lang: (inst.name(lang) if inst else None) or made.partner for lang in LANGS}
    return sorted(rows.values(), key=lambda r: (r.partner, r.basis or ""))


def _deliveries(
    conn: Any, start: dt.datetime, end: dt.datetime
) -> dict[tuple[str, str | None], int]:
    """Successful delivery events of the audit log, per partner and basis."""
    from ._events import BASIS_EXTENSION

    found: dict[tuple[str, str | None], int] = defaultdict(int)
    query = sa.select(entries.c.partner, entries.c.canonical).where(
        entries.c.kind == "delivery", entries.c.recorded >= start, entries.c.recorded < end
    )
    for partner, canonical in conn.execute(query):
        event = orjson.loads(canonical)
        if event.get("outcome") != "0" or not partner:
            continue
        basis = None
        for ext in event.get("extension") or []:
            if ext.get("url") == BASIS_EXTENSION:
                basis = next(
                    (
                        e["valueCoding"]["code"]
                        for e in ext.get("extension", [])
                        if e.get("url") == "basis"
                    ),
                    None,
                )
        found[(partner, basis)] += 1
    return found


def _both(text: dict[str, str]) -> str:
    return " / ".join(dict.fromkeys(text[lang] for lang in LANGS))


_COLUMNS = ("partner", "basis", "records", "individuals", "delivered")


def render(rows: list[TransferRow], year: int, fmt: str) -> str:
    if fmt == "json":
        return (
            orjson.dumps(
                {
                    "year": year,
                    "rows": [r.to_json() for r in rows],
                    "source": label("report", "source"),
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
            + "\n"
        )
    header = [_both(label("report", c)) for c in _COLUMNS]
    body = [
        [
            _both(r.names) if r.names else r.partner,
            _both(basis_name(r.basis)),
            str(len(r.records)),
            str(len(r.people)),
            str(r.delivered),
        ]
        for r in rows
    ]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["partner_code", "basis_code", *header])
        for r, cells in zip(rows, body, strict=True):
            writer.writerow([r.partner, r.basis or "", *cells])
        return out.getvalue()
    title = f"{_both(label('report', 'title'))} — {year}"
    table = (
        "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in line) + "</tr>\n"
            for line in body
        )
        or f'<tr><td colspan="5">{html.escape(_both(label("report", "empty")))}</td></tr>\n'
    )
    return (
        '<!DOCTYPE html>\n<html lang="zh-Hans"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body>\n<h1>{html.escape(title)}</h1>\n"
        "<table>\n<tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in header)
        + "</tr>\n"
        + table
        + "</table>\n"
        f"<p>{html.escape(_both(label('report', 'source')))}</p>\n</body></html>\n"
    )
