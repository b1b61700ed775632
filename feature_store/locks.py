"""Named leases in the database: one holder at a time, across processes and hosts.

``Lease(engine, "train")`` is how two ``aiops train`` runs keep out of each
other's way. The row in ``aiops_locks`` carries who holds it and until when; the
holder refreshes it while it works, and a holder that died (kill -9, a lost
machine) stops refreshing, so its lease expires and the next run takes over.
Taking over is a compare-and-swap on the old holder and expiry, so two runs that
both find an expired lease cannot both win.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from types import TracebackType

from sqlalchemy import Engine, and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from aiops.core.errors import AiopsError
from feature_store import tables


class LockHeld(AiopsError):
    """Someone else holds the lease; the message says who and since when."""

    def __init__(self, name: str, holder: str, since: float, until: float) -> None:
        when = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(since))
        left = max(until - time.time(), 0)
        super().__init__(
            f"another {name!r} run holds the database lock since {when} ({holder});"
            f" it expires in {left:.0f}s unless that run refreshes it"
        )
        self.holder = holder


class Lease:
    def __init__(self, engine: Engine, name: str, *, ttl: float = 600.0) -> None:
        self.engine = engine
        self.name = name
        self.ttl = ttl
        self.holder = f"pid {os.getpid()} on {socket.gethostname()} ({uuid.uuid4().hex[:8]})"
        self.held = False

    def try_acquire(self) -> bool:
        """Take the lease if it is free or expired (True); raise LockHeld if it is held.

        False means a race was lost (another run inserted or took over at the same
        moment): look again.
        """
        t = tables.locks
        now = time.time()
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(t).where(t.c.name == self.name)).one_or_none()
                if row is None:
                    conn.execute(
                        insert(t).values(
                            name=self.name,
                            holder=self.holder,
                            acquired_at=now,
                            expires_at=now + self.ttl,
                        )
                    )
                    self.held = True
                    return True
                if row.expires_at > now:
                    raise LockHeld(self.name, row.holder, row.acquired_at, row.expires_at)
                taken = conn.execute(
                    update(t)
                    .where(
                        and_(
                            t.c.name == self.name,
                            t.c.holder == row.holder,
                            t.c.expires_at == row.expires_at,
                        )
                    )
                    .values(holder=self.holder, acquired_at=now, expires_at=now + self.ttl)
                ).rowcount
                self.held = taken == 1
                return self.held
        except IntegrityError:  # a concurrent insert of the same name
            self.held = False
            return False
        except OperationalError as exc:
            self.held = False
            # SQLite refusing to upgrade a stale read to a write: a lost race. Anything
            # else (the database is gone) is raised, not retried for ever by acquire().
            if self.engine.dialect.name == "sqlite" and "locked" in str(exc.orig).lower():
                return False
            raise

    def acquire(self, *, wait: float = 0.0, every: float = 1.0) -> Lease:
        """Take the lease, waiting up to ``wait`` seconds for the holder to finish."""
        deadline = time.monotonic() + wait
        while True:
            try:
                if self.try_acquire():
                    return self
            except LockHeld:
                if time.monotonic() >= deadline:
                    raise
            # look again after ``every`` seconds, but not later than the deadline
            time.sleep(min(every, max(deadline - time.monotonic(), 0.0)))

    def refresh(self) -> None:
        """Push the expiry out by ``ttl``; raises LockHeld if the lease was lost."""
        t = tables.locks
        now = time.time()
        with self.engine.begin() as conn:
            n = conn.execute(
                update(t)
                .where(and_(t.c.name == self.name, t.c.holder == self.holder))
                .values(expires_at=now + self.ttl)
            ).rowcount
        if n != 1:
            self.held = False
            raise LockHeld(self.name, "someone else (this run's lease expired)", now, now)

    def release(self) -> None:
        if not self.held:
            return
        t = tables.locks
        with self.engine.begin() as conn:
            conn.execute(delete(t).where(and_(t.c.name == self.name, t.c.holder == self.holder)))
        self.held = False

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
