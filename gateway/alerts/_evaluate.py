"""Evaluating the thresholds over the store, and the alerts' state in it.

``observe`` reads what is watched, per partner, from the outbox (``Outbox.stats``: depth,
oldest waiting record, dead rows; rows the policy holds; rows our credentials block).
``current`` turns it into the firing :class:`Alert` s, reading nothing but the store.
``check`` also records each (partner, kind)'s state in ``alert_state`` and claims its
notifications: a transition (fired, escalated to critical, resolved) is notified by the
one process whose compare-and-set of ``notified_level`` succeeds, so several gateways
evaluating the same store notify it once, and an alert that stays firing is not
notified again.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config import Settings
from ..delivery import Outbox
from ..metrics import credentials_blocked
from ..network import Network
from ..store import Store, conflict_insert, metadata, utcnow
from ._config import LEVELS, LISTENER_PREFIX, AlertRules, alert_rules
from ._labels import LANGUAGES, Labels, labels, partner_names
from ._tables import alert_state

__all__ = ["Alert", "AlertState", "CheckResult", "Notice", "check", "current", "observe", "states"]

_outbox = metadata.tables["outbox"]
_SEVERITY = {1: "warning", 2: "critical"}
_LEVEL = {name: n for n, name in _SEVERITY.items()}


@dataclass(frozen=True, slots=True)
class Alert:
    """A threshold crossed: ``value`` at or above ``threshold`` (counts; oldest_age in
    seconds). ``firing_since`` is when the evaluator first saw it (None until an
    evaluation recorded it); ``texts`` and ``titles`` by language."""

    partner: str
    kind: str
    value: float
    threshold: float
    severity: str  # warning | critical
    firing_since: datetime | None
    texts: Mapping[str, str] = field(default_factory=dict)
    titles: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "kind": self.kind,
            "value": self.value,
            "threshold": self.threshold,
            "severity": self.severity,
            "firing_since": _iso(self.firing_since),
            "texts": dict(self.texts),
            "titles": dict(self.titles),
        }


@dataclass(frozen=True, slots=True)
class Notice:
    """One transition to notify: ``event`` fired, escalated (warning → critical) or
    resolved; ``alert`` says what fired (for a resolution: the level last notified,
    the value now), its texts those of the event."""

    event: str  # firing | escalated | resolved
    alert: Alert
    at: datetime
    resolved_at: datetime | None = None
    gateway: str | None = None  # the institution setting: which gateway speaks

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "gateway": self.gateway,
            "at": _iso(self.at),
            "resolved_at": _iso(self.resolved_at),
            **self.alert.to_json(),
        }


@dataclass(frozen=True, slots=True)
class AlertState:
    """A row of ``alert_state``: the last evaluation of one partner and kind."""

    partner: str
    kind: str
    severity: str | None  # None: not firing
    value: float | None
    threshold: float | None
    firing_since: datetime | None
    resolved_at: datetime | None
    notified: str | None  # the severity last notified; None: its resolution was, or nothing
    notified_at: datetime | None
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "partner": self.partner,
            "kind": self.kind,
            "severity": self.severity,
            "value": self.value,
            "threshold": self.threshold,
            "firing_since": _iso(self.firing_since),
            "resolved_at": _iso(self.resolved_at),
            "notified": self.notified,
            "notified_at": _iso(self.notified_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    alerts: list[Alert]  # firing now
    notices: list[Notice]  # the transitions this evaluation claimed (and notified)
    failed: list[Notice] = field(default_factory=list)  # claimed, not delivered: retried


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


# -- observing -------------------------------------------------------------------------


def observe(
    store: Store, now: datetime | None = None, settings: Settings | None = None
) -> dict[tuple[str, str], float]:
    """(partner, kind) → value, for the partners with outbox rows; with ``settings``, also
    (``listener:<name>``, ``listener_down``) for each listener they configure."""
    return _observe(store, now, settings)[0]


def _observe(
    store: Store, now: datetime | None, settings: Settings | None
) -> tuple[dict[tuple[str, str], float], dict[str, tuple[str, ...]]]:
    """What ``observe`` says, and per partner the credentials codes its rows are blocked
    by (the ``credentials_refused`` alert names them)."""
    now = now or utcnow()
    out: dict[tuple[str, str], float] = {}
    for name, host, port in _listeners(settings):
        out[(LISTENER_PREFIX + name, "listener_down")] = 0.0 if _accepts(host, port) else 1.0
    for entry in Outbox(store, clock=lambda: now).stats(now):
        partner = entry["partner"]
        out[(partner, "queue_depth")] = float(entry["depth"])
        out[(partner, "oldest_age")] = float(entry["oldest_waiting_seconds"] or 0)
        out[(partner, "dead_letters")] = float(entry["states"].get("dead", 0))
    o = _outbox.c
    held = (
        sa.select(o.partner, sa.func.count())
        .where(o.state == "held", o.last_error == "policy.held")
        .group_by(o.partner)
    )
    codes: dict[str, set[str]] = {}
    with store.engine.connect() as conn:
        for partner, count in conn.execute(held):
            out[(partner, "policy_holds")] = float(count)
        for partner, code, count in conn.execute(credentials_blocked(_outbox)):
            key = (partner, "credentials_refused")
            out[key] = out.get(key, 0.0) + float(count)
            codes.setdefault(partner, set()).add(code)
    return out, {partner: tuple(sorted(found)) for partner, found in codes.items()}


def _listeners(settings: Settings | None) -> list[tuple[str, str, int]]:
    if settings is None:
        return []
    found = [("mllp", settings.mllp_host, settings.mllp_port)]
    found.append(("dicom", settings.dicom_host, settings.dicom_port))
    return [(name, host, port) for name, host, port in found if port]


def _accepts(host: str, port: int) -> bool:
    """Whether a listener's port takes a connection (closed at once, nothing sent)."""
    local = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((local, port), timeout=2.0):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class _Reading:
    partner: str
    kind: str
    value: float
    level: int
    threshold: float | None
    codes: tuple[str, ...] = ()  # credentials_refused: the codes blocking the rows


def _readings(
    rules: AlertRules,
    observed: Mapping[tuple[str, str], float],
    also: Iterable[tuple[str, str]],
    codes: Mapping[str, tuple[str, ...]] | None = None,
) -> list[_Reading]:
    """Every (partner, kind) watched with a value, and those in ``also`` (state rows
    that may need resolving: a kind switched off resolves)."""
    partners = {p for p, _ in observed} | {p for p, _ in also}
    keys = set(also)
    for partner in partners:
        keys.update((partner, kind) for kind in rules.for_partner(partner))
    out = []
    for partner, kind in sorted(keys):
        value = observed.get((partner, kind), 0.0)
        threshold = rules.for_partner(partner).get(kind)
        level, crossed = threshold.level(value) if threshold is not None else (0, None)
        named = (codes or {}).get(partner, ()) if kind == "credentials_refused" else ()
        out.append(_Reading(partner, kind, value, level, crossed, named))
    return out


def _rows(conn: Connection) -> dict[tuple[str, str], Any]:
    return {(r.partner, r.kind): r for r in conn.execute(sa.select(alert_state))}


# -- the public reads ------------------------------------------------------------------


def current(store: Store, settings: Settings, now: datetime | None = None) -> list[Alert]:
    """The alerts firing now, most severe first: the thresholds evaluated over the store
    (nothing is written or notified), with since when each fires as recorded."""
    now = now or utcnow()
    rules = alert_rules(settings)
    network = Network.load(settings.network)
    observed, codes = _observe(store, now, settings)
    return _firing(store, _readings(rules, observed, (), codes), network)


def _firing(store: Store, readings: list[_Reading], network: Network) -> list[Alert]:
    with store.engine.connect() as conn:
        rows = _rows(conn)
    alerts = []
    for reading in readings:
        if reading.level:
            row = rows.get((reading.partner, reading.kind))
            since = row.firing_since if row is not None else None
            alerts.append(_alert(reading, reading.level, reading.threshold, since, network))
    return sorted(alerts, key=lambda a: (-_LEVEL[a.severity], a.partner, a.kind))


def states(store: Store) -> list[AlertState]:
    """Every recorded alert state (firing or resolved), by partner and kind."""
    with store.engine.connect() as conn:
        rows = sorted(_rows(conn).values(), key=lambda r: (r.partner, r.kind))
    return [
        AlertState(
            r.partner,
            r.kind,
            _SEVERITY.get(r.level),
            r.value,
            r.threshold,
            r.firing_since,
            r.resolved_at,
            _SEVERITY.get(r.notified_level),
            r.notified_at,
            r.updated_at,
        )
        for r in rows
    ]


def _alert(
    reading: _Reading,
    level: int,
    threshold: float | None,
    since: datetime | None,
    network: Network | None,
    event: str = "firing",
    texts: Labels | None = None,
) -> Alert:
    texts = texts or labels()
    names = partner_names(network, reading.partner)
    crossed = threshold if threshold is not None else 0.0
    severity = _SEVERITY[level]
    return Alert(
        reading.partner,
        reading.kind,
        reading.value,
        crossed,
        severity,
        since,
        texts.texts(
            "kinds",
            reading.kind,
            event,
            partner=names,
            value=texts.value(reading.kind, reading.value),
            threshold=texts.value(reading.kind, crossed),
            # codes and the partner's key are the gateway's words, alike in every language
            codes=dict.fromkeys(LANGUAGES, ", ".join(reading.codes) or "-"),
            key=dict.fromkeys(LANGUAGES, reading.partner),
        ),
        texts.texts(
            "subject",
            severity=texts.texts("severity", "resolved" if event == "resolved" else severity),
            partner=names,
            kind=texts.texts("kinds", reading.kind, "name"),
        ),
    )


# -- evaluating and claiming -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claim:
    row_id: int
    event: str
    level: int  # the level now notified (0: resolved)
    before: int  # the level notified before the claim
    before_at: datetime | None
    firing_since: datetime | None
    threshold: float | None


def check(
    store: Store,
    settings: Settings,
    now: datetime | None = None,
    notifier: Any = None,
) -> CheckResult:
    """Evaluate, record each state, and notify each transition this process claims
    (``notifier.send(notice) -> bool``; None: claimed, nothing sent). A notice no
    channel took is given back (its claim undone) so the next evaluation tries again."""
    now = now or utcnow()
    rules = alert_rules(settings)
    network = Network.load(settings.network)
    with store.engine.connect() as conn:
        rows = _rows(conn)
    known = [k for k, r in rows.items() if r.level or r.notified_level]
    notices: list[tuple[_Claim, Notice]] = []
    observed, codes = _observe(store, now, settings)
    readings = _readings(rules, observed, known, codes)
    for reading in readings:
        row = rows.get((reading.partner, reading.kind))
        if not reading.level and (row is None or not (row.level or row.notified_level)):
            continue  # quiet, and was: nothing to write (no write lock taken)
        claim = _record(store, reading, now)
        if claim is None:
            continue
        level = claim.level or claim.before
        threshold = claim.threshold if claim.event == "resolved" else reading.threshold
        alert = _alert(
            reading,
            level,
            _threshold_of(rules, reading, level, threshold),
            claim.firing_since,
            network,
            "resolved" if claim.event == "resolved" else "firing",
        )
        resolved = now if claim.event == "resolved" else None
        notices.append((claim, Notice(claim.event, alert, now, resolved, settings.institution)))
    sent, failed = [], []
    for claim, notice in notices:
        if notifier is None or notifier.send(notice):
            sent.append(notice)
        else:
            _unclaim(store, claim, now)
            failed.append(notice)
    return CheckResult(_firing(store, readings, network), sent, failed)


def _threshold_of(
    rules: AlertRules, reading: _Reading, level: int, known: float | None
) -> float | None:
    """The threshold of ``level`` (a resolution names the one it had crossed)."""
    if known is not None:
        return known
    threshold = rules.for_partner(reading.partner).get(reading.kind)
    return getattr(threshold, LEVELS[level - 1]) if threshold is not None else None


def _record(store: Store, reading: _Reading, now: datetime) -> _Claim | None:
    """Record one reading and claim its transition, in one write transaction."""
    a = alert_state.c
    where = (a.partner == reading.partner, a.kind == reading.kind)
    with store.engine.execution_options(write=True).begin() as conn:
        row = conn.execute(sa.select(alert_state).where(*where)).first()
        if row is None:
            if not reading.level:
                return None  # nothing fired: no row needed
            _insert_ignore(conn, reading, now)
            row = conn.execute(sa.select(alert_state).where(*where)).one()
        firing = reading.level > 0
        conn.execute(
            alert_state.update()
            .where(*where)
            .values(
                level=reading.level,
                value=reading.value,
                threshold=reading.threshold,
                # atomic: the first evaluator to see it firing sets since when
                firing_since=sa.func.coalesce(a.firing_since, now) if firing else None,
                resolved_at=(
                    a.resolved_at
                    if firing
                    else sa.case((a.firing_since.is_not(None), now), else_=a.resolved_at)
                ),
                updated_at=now,
            )
        )
        before = row.notified_level
        if reading.level > before:
            event, level = ("firing" if before == 0 else "escalated"), reading.level
        elif not firing and before > 0:
            event, level = "resolved", 0
        else:
            return None
        done = conn.execute(
            alert_state.update()
            .where(a.id == row.id, a.notified_level == before)
            .values(notified_level=level, notified_at=now)
        )
        if done.rowcount != 1:
            return None  # another evaluator claimed it
        since = conn.execute(sa.select(a.firing_since).where(a.id == row.id)).scalar()
        return _Claim(
            row.id,
            event,
            level,
            before,
            row.notified_at,
            since if firing else row.firing_since,
            row.threshold,
        )


def _insert_ignore(conn: Connection, reading: _Reading, now: datetime) -> None:
    """A new row (level 0, nothing notified); one another process inserted meanwhile is kept
    (the unique constraint on partner and kind)."""
    values = {
        "partner": reading.partner,
        "kind": reading.kind,
        "level": 0,
        "notified_level": 0,
        "updated_at": now,
    }
    if conn.dialect.name in ("postgresql", "sqlite"):
        insert = conflict_insert(alert_state, conn.dialect.name)
        conn.execute(insert.values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - the store runs on SQLite and PostgreSQL only
        with conn.begin_nested():
            conn.execute(alert_state.insert().values(values))


def _unclaim(store: Store, claim: _Claim, now: datetime) -> None:
    """Give a claim back (its notice reached no channel): unless another process moved it
    since, the level notified is what it was, and the next evaluation claims it again."""
    a = alert_state.c
    with store.engine.execution_options(write=True).begin() as conn:
        conn.execute(
            alert_state.update()
            .where(a.id == claim.row_id, a.notified_level == claim.level, a.notified_at == now)
            .values(notified_level=claim.before, notified_at=claim.before_at)
        )
