"""``gateway audit transfers``: per recipient and legal basis, the records and distinct
individuals that crossed the boundary in a year, from the decisions the policy stage
stores (read-only here) and the audit log's successful deliveries; labels in Chinese
and English (labels.yaml, and the policy's names of legal bases).

Individuals are people, not identifiers (PIPL and PCPD thresholds count people): the
pseudonyms of one Patient (all its identifiers) are one individual, and two records'
sets that share a pseudonym are the same individual (:func:`join_people`) — unless the
joined individual would hold two different identifiers of one system (a placeholder
HKID or a family's insurance number several people share): then they stay apart,
counted more, never fewer. Each pseudonym of a set is tagged with its identifier
system (``tag:pseudonym``, gateway/policy/_engine.py ``_person_sets``). The policy's
yearly counters apply the same rule (gateway/policy/_records.py), so the report and the
thresholds agree. Decisions stored before migration 0012 kept no sets (``people``):
each of their pseudonyms is a set of its own, of a system not known (never joined into
a conflict), joined to a later record's person when one names it."""

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


_Values = dict[str, str]  # a pseudonym → its system's tag ("": not known)


def split_tag(item: str) -> tuple[str, str]:
    """A stored pseudonym as (its system's tag, the pseudonym): ``tag:pseudonym`` since
    migration 0012, the bare pseudonym before it (tag "": the system is not known)."""
    tag, sep, value = item.partition(":")
    return (tag, value) if sep else ("", item)


def _conflict(a: _Values, b: _Values) -> bool:
    """Whether one individual holding ``a`` and ``b`` would hold two different
    pseudonyms of one identifier system: a pseudonym only one side holds against one
    only the other holds, of the same system or of a system not known (an untagged
    row: assumed the same, the safe side)."""
    only_a = {a[v] for v in a if v not in b}
    only_b = {b[v] for v in b if v not in a}
    if not only_a or not only_b:
        return False
    return "" in only_a or "" in only_b or not only_a.isdisjoint(only_b)


@dataclass(eq=False)  # each is itself (hashed by identity)
class _Individual:
    order: int  # when made (sets join the oldest individuals first)
    values: _Values = field(default_factory=dict)
    known: set[str] = field(default_factory=set)  # the counted individuals it is
    old: set[str] = field(default_factory=set)  # their stored pseudonyms
    new: set[str] = field(default_factory=set)  # the sets' pseudonyms
    alive: bool = True
    # Where _Holders files it: its systems' tags and the pseudonyms, as last filed.
    filed: tuple[frozenset[str], tuple[str, ...]] | None = None

    def add(self, items: Iterable[str]) -> None:
        for item in items:
            tag, value = split_tag(item)
            if tag or value not in self.values:
                self.values[value] = tag

    def absorb(self, other: _Individual) -> None:
        for value, tag in other.values.items():
            if tag or value not in self.values:
                self.values[value] = tag
        self.known |= other.known
        self.old |= other.old
        self.new |= other.new
        other.alive = False


class _Holders:
    """The individuals by pseudonym, and under each pseudonym by the set of their
    systems' tags (their *signature*): what finds the individuals a set may join without
    reading every individual that shares one of its pseudonyms (a placeholder HKID held
    by thousands of people: comparing each new set with each of them was quadratic).

    Why it may skip: with every pseudonym's system known (no untagged row), an
    individual that holds a value of a system the set holds too but none of the set's
    values of that system conflicts with it (a value only it holds against one only the
    set holds, one system: :func:`_conflict`). So among the holders of a shared
    pseudonym with signature ``sig``, only those that also hold one of the set's values
    of each system of ``sig`` the set has can be joined: they are found through the
    rarest of those values (a new patient's own MRN: no one), and only they are compared
    exactly. Where a system is not known (an untagged pseudonym, on either side) or a
    pseudonym was seen under two tags, every holder is compared, as before."""

    def __init__(self) -> None:
        self.by_value: dict[str, dict[frozenset[str], dict[_Individual, None]]] = {}
        self.tags: dict[str, str] = {}  # a pseudonym's system's tag as first filed
        self.mixed = False  # one filed under two systems' tags: compare every holder

    def put(self, person: _Individual) -> None:
        self.drop(person)
        sig = frozenset(person.values.values())
        for value, tag in person.values.items():
            self.by_value.setdefault(value, {}).setdefault(sig, {})[person] = None
            if tag and self.tags.setdefault(value, tag) != tag:
                self.mixed = True
        person.filed = (sig, tuple(person.values))

    def drop(self, person: _Individual) -> None:
        if person.filed is None:
            return
        sig, values = person.filed
        for value in values:
            members = self.by_value[value][sig]
            members.pop(person, None)
            if not members:
                del self.by_value[value][sig]
        person.filed = None

    def candidates(
        self, first: Iterable[str], person: _Individual, after: int
    ) -> list[_Individual]:
        """The individuals made after ``after`` holding one of ``first`` (the set's
        pseudonyms) that ``person`` (the set, and what it joined so far) may join: every
        other one conflicts with it. Oldest first."""
        by_tag: dict[str, list[str]] = defaultdict(list)
        for value, tag in person.values.items():
            by_tag[tag].append(value)
        exact = (
            self.mixed
            or "" in by_tag
            or any(tag != self.tags.get(v, tag) for v, tag in person.values.items())
        )
        found: dict[_Individual, None] = {}
        for value in first:
            for sig, members in self.by_value.get(value, {}).items():
                pool: Iterable[_Individual] = members
                if not exact and "" not in sig:
                    size = len(members)
                    for tag in sig.intersection(by_tag):
                        through = [self.by_value.get(v, {}).get(sig, {}) for v in by_tag[tag]]
                        if sum(map(len, through)) < size:
                            pool, size = (
                                (i for group in through for i in group),
                                sum(map(len, through)),
                            )
                for other in pool:
                    if other.order > after and other.alive and value in other.values:
                        found[other] = None
        return sorted(found, key=lambda i: i.order)


def join_people(
    sets: Iterable[Iterable[str]], known: Mapping[str, Iterable[str]]
) -> list[tuple[list[str], list[str]]]:
    """The individuals ``sets`` (each the tagged pseudonyms of one Patient) make. Sets
    sharing a pseudonym, directly or through others, are one individual — unless the
    merged individual would hold two different pseudonyms of one identifier system
    (:func:`_conflict`): an identifier several people share (a placeholder HKID, a
    family's insurance number) then joins no one, and they stay apart (counted more,
    never fewer). ``known``: the counted individuals the sets may join, each by id to
    all its stored pseudonyms. Each individual as (its pseudonyms not stored for it
    yet, the known individuals it joins, sorted): joining none, it is a new one;
    joining several, it merges them. Sets are taken in order, each joined to the
    individuals sharing a pseudonym in the order they were made (known ones first,
    by id): the result does not depend on chance. Near-linear in the pseudonyms
    (:class:`_Holders`), however many people share one."""
    made: dict[_Individual, None] = {}
    holders = _Holders()
    for ident in sorted(known):
        person = _Individual(len(made), known={ident}, old=set(known[ident]))
        person.add(person.old)
        made[person] = None
        holders.put(person)
    for items in sets:
        person = _Individual(len(made), new=set(items))
        person.add(person.new)
        first = tuple(person.values)  # who shares one of these may be joined
        pending = holders.candidates(first, person, -1)
        while pending:
            other = pending.pop(0)
            if _conflict(other.values, person.values):
                continue
            older, younger = sorted((other, person), key=lambda i: i.order)
            holders.drop(younger)
            older.absorb(younger)
            person = older
            # It holds more now: who may join it is asked again (those after ``other``).
            pending = holders.candidates(first, person, other.order)
        made[person] = None
        holders.put(person)
    return [(sorted(p.new - p.old), sorted(p.known)) for p in made if p.alive and p.new]


def individuals(sets: Iterable[Iterable[str]]) -> int:
    """How many individuals the pseudonym sets are (:func:`join_people`)."""
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
            # ``people`` (migration 0012): each Patient's pseudonyms; older rows lack it.
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
