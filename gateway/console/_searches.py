"""Saved searches: a search is a POST whose criteria (they may hold a patient identifier)
stay in the store under an opaque random id, the ``?q=`` of the results' URL. Rows, not
process memory, so that under ``gateway serve --workers N`` the GET that follows the POST
finds the search whichever worker process it reaches. The criteria are never logged."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict
from datetime import datetime, timedelta

import sqlalchemy as sa

from ..store import MessageFilter, Store, utcnow
from ._tables import searches

__all__ = ["KEEP", "MAX_SEARCHES", "Searches"]

KEEP = timedelta(hours=12)  # as long as a session lives: no one can use it later
MAX_SEARCHES = 2000  # beyond this, the oldest searches (of anyone) are forgotten first


def _dump(where: MessageFilter) -> str:
    values = asdict(where)
    if where.since is not None:
        values["since"] = where.since.isoformat()
    return json.dumps(values, ensure_ascii=False, sort_keys=True)


def _load(criteria: str) -> MessageFilter:
    values = json.loads(criteria)
    since = values.get("since")
    values["since"] = datetime.fromisoformat(since) if since else None
    return MessageFilter(**values)


class Searches:
    """The saved searches in ``store``, each readable by the user who made it only."""

    def __init__(self, store: Store, cap: int = MAX_SEARCHES) -> None:
        self.store = store
        self.cap = cap
        self._writer = store.engine.execution_options(write=True)

    def save(self, user_id: int, where: MessageFilter) -> str:
        """Keeps ``where`` for ``user_id``; returns its opaque id."""
        qid = secrets.token_urlsafe(16)
        now = utcnow()
        s = searches.c
        with self._writer.begin() as conn:
            conn.execute(
                searches.insert().values(
                    id=qid,
                    user_id=user_id,
                    criteria=_dump(where),
                    created_at=now,
                    expires_at=now + KEEP,
                )
            )
            # the table stays bounded: expired rows, then the oldest beyond the cap
            conn.execute(searches.delete().where(s.expires_at <= now))
            beyond = sa.select(s.id).order_by(s.created_at.desc(), s.id.desc()).offset(self.cap)
            conn.execute(searches.delete().where(s.id.in_(beyond.scalar_subquery())))
        return qid

    def get(self, qid: str, user_id: int) -> MessageFilter | None:
        """The criteria saved under ``qid`` by ``user_id``, unexpired; None else."""
        if not qid:
            return None
        s = searches.c
        query = sa.select(s.criteria).where(
            s.id == qid, s.user_id == user_id, s.expires_at > utcnow()
        )
        with self.store.engine.connect() as conn:
            criteria = conn.execute(query).scalar()
        return _load(criteria) if criteria is not None else None
