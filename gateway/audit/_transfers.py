"""``gateway audit transfers``: per recipient and legal basis, the records and distinct
individuals that crossed the boundary in a year, from the decisions the policy stage
stores (read-only here) and the audit log's successful deliveries; labels in Chinese
and English (labels.yaml, and the policy's names of legal bases).

Individuals are people, not identifiers (PIPL and PCPD thresholds count people): the
pseudonyms of one Patient (all its identifiers) are one individual, and two records'
sets that share a pseudonym are the same individual (:func:`individuals`, union-find).
The policy's yearly counters apply the same rule (gateway/policy/_records.py), so the
report and the thresholds agree. Decisions stored before migration 0013 kept no sets
(``people``): each of their pseudonyms is a set of its own, joined to a later record's
person when one names it."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
from collections import defaultdict
from collections.abc import Iterable, Mapping
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

__all__ = ["TransferRow", "individuals", "join_people", "render", "transfers"]

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


_Node = tuple[str, str]  # ("new", pseudonym) or ("known", individual id)


def join_people(
    sets: Iterable[Iterable[str]], known: Mapping[str, str]
) -> list[tuple[list[str], list[str]]]:
    """The individuals ``sets`` (each the pseudonyms of one Patient) make: sets that share
    a pseudonym, directly or through others, are one individual (union-find). ``known``:
    pseudonyms already counted, each to its individual's id. Each individual as (its
    pseudonyms not known yet, the known individuals it joins, sorted): an individual
    joining none is a new one; one joining several merges them."""
    parent: dict[_Node, _Node] = {}

    def find(node: _Node) -> _Node:
        parent.setdefault(node, node)
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    for pseudonyms in sets:
        nodes: list[_Node] = [("known", known[p]) if p in known else ("new", p) for p in pseudonyms]
        for node in nodes:
            find(node)
        for other in nodes[1:]:
            parent[find(other)] = find(nodes[0])
    groups: dict[_Node, tuple[set[str], set[str]]] = {}
    for node in list(parent):
        fresh, joined = groups.setdefault(find(node), (set(), set()))
        kind, value = node
        (fresh if kind == "new" else joined).add(value)
    return [(sorted(fresh), sorted(joined)) for fresh, joined in groups.values()]


def individuals(sets: Iterable[Iterable[str]]) -> int:
    """How many individuals the pseudonym sets are (sets sharing a pseudonym: one)."""
    return len(join_people(sets, {}))


@dataclass
class TransferRow:
    partner: str
    basis: str | None
    records: set[str] = field(default_factory=set)
    # Each Patient of each decision by the pseudonyms of its identifiers: one set each.
    people: list[tuple[str, ...]] = field(default_factory=list)
    delivered: int = 0
    names: dict[str, str] = field(default_factory=dict)  # the partner's, per language

    @property
    def individuals(self) -> int:
        return individuals(self.people)

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "partner_name": self.names,
            "basis": self.basis,
            "basis_name": basis_name(self.basis),
            "records": len(self.records),
            "individuals": self.individuals,
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
            # ``people`` (migration 0013): each Patient's pseudonyms; older rows lack it.
            sets = c.people if "people" in c else sa.null().label("people")
            query = sa.select(c.id, c.message_id, c.recipient, c.basis, c.patients, sets).where(
                c.decided_at >= start,
                c.decided_at < end,
                c.outcome.in_(("allow", "allow-with-changes")),
                c.current.is_(True),
            )
            for found in conn.execute(query):
                target = row(found.recipient, found.basis)
                target.records.add(f"message/{found.message_id or 'decision-' + str(found.id)}")
                target.people += _people_of(found.people, found.patients)
        deliveries = _deliveries(conn, start, end)
    for (partner, basis), count in deliveries.items():
        row(partner, basis).delivered += count
    for made in rows.values():
        inst = network.find(made.partner) if network else None
        made.names = {lang: (inst.name(lang) if inst else None) or made.partner for lang in LANGS}
    return sorted(rows.values(), key=lambda r: (r.partner, r.basis or ""))


def _people_of(people: str | None, patients: str | None) -> list[tuple[str, ...]]:
    """A decision's individuals as pseudonym sets: as recorded (``people``), else, for a
    decision stored before they were, each pseudonym of ``patients`` alone (which of
    them were one person was not kept; a later record naming two of them joins them)."""
    if people is not None:
        return [tuple(str(p) for p in group) for group in orjson.loads(people)]
    return [(str(p),) for p in orjson.loads(patients or "[]")]


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
            str(r.individuals),
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
