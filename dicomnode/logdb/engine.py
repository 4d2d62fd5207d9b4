"""The log database's engine: URL forms, the SQLite file (private, WAL, busy timeout), and the
stored form of times (naive UTC)."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random

SQLITE_BUSY_TIMEOUT_MS = 30_000


def to_utc_naive(moment: datetime) -> datetime:
    """Stored form of a time: naive UTC. Naive input is taken to be UTC already."""
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def from_stored(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.replace(tzinfo=timezone.utc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def normalise_url(url: str) -> str:
    """Accept a bare filesystem path as shorthand for an SQLite database, and a plain
    postgresql:// URL as meaning the psycopg (3) driver the project ships, not psycopg2."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().absolute()}"
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private_file(path: Path) -> None:
    """Create the SQLite file 0600 before SQLite does (it would honour the umask, often 0644).

    SQLite gives its -wal and -shm files the permissions of the main file, so they follow.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except FileExistsError:  # it exists already, or a second node starting now just made it
        return
    os.close(fd)
    os.chmod(path, 0o600)  # why: explicit, whatever the umask did to os.open's mode


@retry(
    retry=retry_if_exception(lambda exc: "locked" in str(exc)),
    wait=wait_random(0.01, 0.1),
    stop=stop_after_delay(SQLITE_BUSY_TIMEOUT_MS / 1000),
    reraise=True,
)
def set_wal_mode(cursor: sqlite3.Cursor) -> None:
    """Switch to WAL. SQLite answers "database is locked" at once, without its busy handler,
    while another process (a second node starting now) is creating or converting the file."""
    cursor.execute("PRAGMA journal_mode = WAL")


def build_engine(url: str) -> Engine:
    """The log's engine. hide_parameters: SQLAlchemy's error messages would otherwise carry the
    statement's bound values (patient IDs, accession numbers) into whatever logs them."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    in_memory = sqlite_file(url) is None
    kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False},
                              "hide_parameters": True}
    if in_memory:  # one shared connection, or each thread would see its own empty database
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        # Take transaction control from the sqlite3 module (it would defer BEGIN and autocommit
        # DDL); SQLAlchemy then emits BEGIN itself below, so migrations are transactional.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not in_memory:
            set_wal_mode(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable on app crash
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "")
        connection.exec_driver_sql(f"BEGIN {mode}".strip())

    return engine
