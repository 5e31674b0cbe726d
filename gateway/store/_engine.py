"""Engines: SQLite (WAL, synchronous=FULL: a commit is on disk before an ACK says so)
by default, PostgreSQL through psycopg 3 when ``database_url`` names one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine, make_url

__all__ = ["conflict_insert", "database_url", "make_engine"]

BUSY_TIMEOUT_MS = 30_000  # another process (or thread) writing: wait, don't fail


def database_url(home: Path, configured: str | None) -> str:
    """The configured URL, else a SQLite file in GATEWAY_HOME."""
    return configured or f"sqlite:///{home / 'gateway.db'}"


def conflict_insert(table: Table, dialect: str) -> Any:
    """An INSERT into ``table`` that has ``on_conflict_do_nothing``/``_do_update``: the
    dialect's own (PostgreSQL's or SQLite's, which spell ON CONFLICT alike); core's
    insert has neither. ``dialect``: the engine's name, ``postgresql`` or ``sqlite``."""
    return (postgresql if dialect == "postgresql" else sqlite).insert(table)


def make_engine(url: str | URL) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if parsed.database and parsed.database != ":memory:":
        _private_file(Path(parsed.database))
    engine = create_engine(
        parsed,
        connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000},
        pool_size=10,
        max_overflow=20,
    )
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _private_file(path: Path) -> None:
    """Make a new SQLite file readable by its owner only: it holds every message as
    received (patients' names and identifiers), and the default umask would leave it
    world-readable. SQLite gives its -wal and -shm files the database file's mode. An
    existing file keeps the mode its owner chose (a backup group, say)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is switched off: _sqlite_begin says which kind.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    for pragma in (
        "journal_mode=WAL",  # readers never block the writer, nor the writer them
        "synchronous=FULL",  # fsync at each commit: an acknowledged message survives a crash
        f"busy_timeout={BUSY_TIMEOUT_MS}",
        "foreign_keys=ON",
    ):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # A write transaction takes the write lock at once (BEGIN IMMEDIATE): a deferred one
    # that reads first and then writes can fail with "database is locked" instead of
    # waiting for the busy timeout.
    write = connection.get_execution_options().get("write", False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
