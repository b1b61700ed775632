"""The one audit writer of the webhook: every ``runbooks_audit`` row goes through here.

A row is built by ``audit_row`` (the columns, the subject taken from the signal)
and inserted by ``insert_row`` with one prepared statement. The webhook writes
rows only through ``AuditLog``: inside a unit of work of its group committer
(``runbooks.writer``), in the same transaction as the decision they record, and
published to the live streams (``GET /events``) only after that transaction
committed, so a stream never shows a row that a rollback took back. The
``aiops killswitch`` commands, which run outside the webhook, insert their rows
with the same ``audit_row`` and ``insert_row``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine, insert

from feature_store import tables
from runbooks.events import Signal
from runbooks.writer import GroupCommitter

T = TypeVar("T")

#: one statement object for every audit row (no per-row statement building)
AUDIT_INSERT = insert(tables.audit)

#: a unit of work that audits: it appends the rows it wrote to the list it is given
Work = Callable[[Any, list[dict[str, Any]]], T]
#: what replaces a unit that raised: ``(conn, rows, exc)``
Recover = Callable[[Any, list[dict[str, Any]], Exception], T]


def audit_row(kind: str, sig: Signal | None = None, **kw: Any) -> dict[str, Any]:
    """The columns of one audit row; without a signal the subject comes from ``kw``."""
    row = {
        "ts": kw.pop("ts", None) or time.time(),
        "kind": kind,
        "incident_id": kw.pop("incident_id", None),
        "alertname": sig.alertname if sig else kw.pop("alertname", None),
        "metric": sig.metric if sig else kw.pop("metric", None),
        "namespace": sig.namespace if sig else kw.pop("namespace", None),
        "app": sig.app if sig else kw.pop("app", None),
        "action": kw.pop("action", None),
        "result": kw.pop("result", None),
        "actor": kw.pop("actor", None) or "webhook",
        "details": kw.pop("details", None),
    }
    return row


def insert_row(conn: Any, row: dict[str, Any]) -> dict[str, Any]:
    conn.execute(AUDIT_INSERT, row)
    return row


class AuditLog:
    """Writes the webhook's audit rows in its group committer's transactions, counts
    them in the metrics and publishes them once committed."""

    def __init__(
        self,
        engine: Engine,
        *,
        metrics: Any = None,
        on_audit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.writer = GroupCommitter(engine)
        self.metrics = metrics
        self.on_audit = on_audit

    def write(self, conn: Any, kind: str, sig: Signal | None = None, **kw: Any) -> dict[str, Any]:
        """One row in the caller's unit of work (published by whoever commits it)."""
        return self.record(conn, audit_row(kind, sig, **kw))

    def record(self, conn: Any, row: dict[str, Any]) -> dict[str, Any]:
        """A row built elsewhere (``runbooks.killswitch``), inserted and counted."""
        t0 = time.perf_counter()
        insert_row(conn, row)
        if self.metrics:
            self.metrics.audit_write.observe(time.perf_counter() - t0)
            self.metrics.events.labels(row["kind"]).inc()
        return row

    def publish(self, rows: list[dict[str, Any]]) -> None:
        if self.on_audit:
            for row in rows:
                self.on_audit(row)

    def commit(self, work: Work[T], recover: Recover[T] | None = None) -> T:
        """Run ``work(conn, rows)`` in the next batch; publish its rows once committed.

        ``recover(conn, rows, exc)`` may replace a unit that raised (rolled back to its
        savepoint) with what it writes instead, e.g. the ``duplicate`` row."""
        rows: list[dict[str, Any]] = []
        out = self.writer.run(*_unit(work, recover, rows))
        self.publish(rows)
        return out

    async def commit_async(self, work: Work[T], recover: Recover[T] | None = None) -> T:
        """``commit`` for a coroutine: the event loop is not blocked while it commits."""
        rows: list[dict[str, Any]] = []
        out = await self.writer.run_async(*_unit(work, recover, rows))
        self.publish(rows)
        return out

    def now(self, kind: str, sig: Signal | None = None, **kw: Any) -> dict[str, Any]:
        """One row, committed and published before this returns (e.g. a refusal)."""
        return self.commit(lambda conn, rows: _appended(rows, self.write(conn, kind, sig, **kw)))

    def close(self) -> None:
        self.writer.close()


def _unit(
    work: Work[T], recover: Recover[T] | None, rows: list[dict[str, Any]]
) -> tuple[Callable[[Any], T], Callable[[Any, Exception], T] | None]:
    """The group committer's unit and recovery; ``rows`` holds what the committed one
    wrote (a unit may run again after a failed batch, a recovery replaces it)."""

    def unit(conn: Any) -> T:
        rows.clear()
        return work(conn, rows)

    if recover is None:
        return unit, None

    def rescue(conn: Any, exc: Exception) -> T:
        rows.clear()
        return recover(conn, rows, exc)

    return unit, rescue


def _appended(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    rows.append(row)
    return row
