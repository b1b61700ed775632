"""The SQLAlchemy engine behind the feature store, the model registry and the audit log.

``AIOPS_DATABASE_URL`` picks the database: SQLite (the embedded default) or
PostgreSQL. ``postgresql://`` and ``postgres://`` URLs use the psycopg 3 driver.
Pooled connections are pinged before use, and ``retrying`` re-runs a unit of work
whose connection was lost, so a database restart is a logged hiccup, not a crash.

SQLite runs in WAL mode with ``synchronous=FULL``: every commit is on disk (the WAL
is fsynced) before it returns, so what was committed — above all the runbook audit
rows a webhook answer vouches for — survives a power loss or an OS crash, not only
a crash of the process (``NORMAL`` would keep the last commits only in the OS cache
until the next checkpoint). The webhook group-commits its decisions, so it pays
that fsync once per batch, not once per event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from aiops.core.errors import ConfigError
from aiops.core.redact import short_error

log = logging.getLogger("aiops.db")
T = TypeVar("T")


def normalise_url(url: str) -> URL:
    """The SQLAlchemy URL for ``url``; ConfigError naming AIOPS_DATABASE_URL if unusable."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"AIOPS_DATABASE_URL: not a database URL: {url!r}") from None
    backend = parsed.get_backend_name()
    if backend == "postgres" or parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"AIOPS_DATABASE_URL: unsupported database {backend!r} (use sqlite:/// or postgresql://)"
        )
    return parsed


#: seconds a new connection keeps asking for WAL mode while another one holds the lock
WAL_WAIT_SECONDS = 30.0


def _wal(cur: Any) -> None:
    """``PRAGMA journal_mode=WAL``. Switching a fresh file to WAL needs the file to
    itself, and SQLite answers "database is locked" at once (no busy handler) while a
    second process (two ``aiops migrate`` at once) holds its write lock: ask again."""
    import sqlite3

    deadline = time.monotonic() + WAL_WAIT_SECONDS
    pause = 0.01
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """An engine for ``url``. SQLite files get WAL mode, a busy timeout and their folder."""
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            path = Path(database).expanduser()  # sqlite3 itself does not expand "~"
            path.parent.mkdir(parents=True, exist_ok=True)
            parsed = parsed.set(database=str(path))
        engine = create_engine(
            parsed,
            connect_args={"timeout": 30.0, "check_same_thread": False},
            pool_pre_ping=True,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            _wal(cur)
            cur.execute("PRAGMA synchronous=FULL")  # durable commits (module doc)
            cur.close()

        return engine
    return create_engine(
        parsed,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


def is_disconnect(exc: BaseException) -> bool:
    """True when ``exc`` means the connection to the database is gone or never came."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


def retrying(
    work: Callable[[], T], *, attempts: int = 3, delay: float = 0.2, what: str = "database"
) -> T:
    """Run ``work``; when the connection is lost, wait and run it again (whole)."""
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except (OperationalError, DBAPIError) as exc:
            if not is_disconnect(exc) or attempt == attempts:
                raise
            log.warning(
                "%s connection lost, retrying attempt=%d error=%s",
                what,
                attempt,
                short_error(exc),
            )
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
