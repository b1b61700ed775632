"""Anomaly events to the runbook webhook (DESIGN 4.3), signed, one per incident.

When ``RUNBOOK_WEBHOOK_URL`` is set the detector posts one ``firing`` event when an
incident opens (``detector.incidents``: related anomalies grouped, with a probable
cause), one more (the next ``revision``) when a member joins it or its probable cause
moves, and one ``resolved`` event when its last member ends — not one per series
or per cycle. The event's ``metric``, ``labels``, ``score`` and ``reasons`` are its
probable cause's; ``incident`` lists the members (probable cause first, at most
``MAX_EVENT_MEMBERS``) and the evidence. Events are sent from a background thread
so a slow webhook never delays a cycle.

An event stays queued until the webhook acknowledges it (2xx): 5xx answers, 429,
timeouts and connection errors are retried with exponential backoff capped at
``max_backoff`` (60 s), for as long as it takes; the first success sends every
queued event at once (the webhook is back). A 4xx answer is not retried (the event
is wrong, sending it again will not help). A ``resolved`` event supersedes the
``firing`` event of its anomaly that is still waiting for a retry: the firing one
is dropped, the resolved one sent. The queue is bounded (``max_queue``): past it
the oldest event is dropped and counted (``aiops_detector_webhook_queue_dropped_total``).

With a database (the feature store's), the queue is also kept in the table
``aiops_webhook_outbox`` (migration 005): a restarted detector sends what was not
acknowledged, and a ``firing`` event stays there (state ``done``) while its anomaly
is open, so the restarted detector knows the onset: the anomaly keeps its event
id, and its ``resolved`` event is sent when it ends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httpx

from aiops.core.numbers import finite_or_none
from aiops.core.redact import short_error
from aiops.core.series import series_key
from aiops.core.signing import signed_headers

log = logging.getLogger("aiops.notify")


def event_id(metric: str, labels: dict[str, str], started_at: float) -> str:
    """Stable per series and onset: a replay of the same onset has the same id."""
    raw = f"{series_key(metric, labels)}@{started_at:.0f}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def anomaly_event(result: Any, status: str, now: float) -> dict[str, Any]:
    num = finite_or_none

    started = result.started_at if result.started_at is not None else result.observed_at
    return {
        "id": event_id(result.metric, result.labels, started),
        "metric": result.metric,
        "labels": dict(result.labels),
        "score": num(result.score),
        "forest_score": num(getattr(result, "forest_score", None)),
        "reasons": [r.as_dict() for r in result.reasons],
        "value": num(result.value),
        "baseline": num(result.baseline),
        "started_at": started,
        "observed_at": now if status == "resolved" else result.observed_at,
        "model_version": result.model_version,
        "status": status,
    }


#: members an incident event lists at most (``member_count`` says how many it has)
MAX_EVENT_MEMBERS = 200


def incident_event(inc: Any, cause: Any, revision: int, now: float) -> dict[str, Any]:
    """The ``firing`` event of incident ``inc`` (``detector.incidents.Incident``) at its
    ``revision``; ``cause`` is its probable cause's latest ``SeriesResult`` (None once
    that series ended: the member's own record stands in)."""
    member = inc.cause
    if cause is not None:
        event = anomaly_event(cause, "firing", now)
    else:
        event = {
            "metric": member.query,
            "labels": dict(member.labels),
            "score": finite_or_none(member.score),
            "forest_score": None,
            "reasons": [{"reason": r} for r in member.reasons],
            "value": None,
            "baseline": None,
            "observed_at": now,
            "model_version": "",
            "status": "firing",
        }
    described = inc.as_dict()
    members = described["members"]
    event.update(
        id=inc.id,
        started_at=inc.opened_at,
        incident={
            "id": inc.id,
            "revision": revision,
            "cause": member.service,
            "evidence": described["evidence"],
            "changes": described["changes"],
            "members": members[:MAX_EVENT_MEMBERS],
            "member_count": len(members),
        },
    )
    return event


def resolved_event(firing: dict[str, Any], now: float) -> dict[str, Any]:
    """The ``resolved`` event of a ``firing`` one (same id), observed at ``now``."""
    return {**firing, "observed_at": now, "status": "resolved"}


class Outbox:
    """The queue's copy in the database (``aiops_webhook_outbox``); never raises.

    One row per event id: ``pending`` until the webhook acknowledged it; a
    acknowledged ``firing`` row turns ``done`` and stays while its anomaly is open;
    its ``resolved`` event replaces it and is deleted once acknowledged.
    """

    def __init__(self, engine: Any) -> None:
        from feature_store import tables

        self.engine = engine
        self.table = tables.webhook_outbox
        self.up: bool | None = None

    def _run(self, what: str, work: Any) -> Any:
        try:
            with self.engine.begin() as conn:
                out = work(conn)
        except Exception as exc:  # the database is down: the queue lives on in memory
            if self.up is not False:
                log.error(
                    "webhook outbox %s failed error=%s",
                    what,
                    short_error(exc),
                )
            self.up = False
            return None
        if self.up is False:
            log.info("webhook outbox reachable again")
        self.up = True
        return out

    def load(self) -> list[dict[str, Any]]:
        from sqlalchemy import select

        t = self.table
        rows = self._run(
            "read",
            lambda conn: [
                dict(r._mapping) for r in conn.execute(select(t).order_by(t.c.queued_at))
            ],
        )
        return rows or []

    def put(self, event: dict[str, Any], queued_at: float) -> None:
        from feature_store.store import upsert

        row = {
            "event_id": event["id"],
            "status": event["status"],
            "state": "pending",
            "queued_at": queued_at,
            "body": json.dumps(event),
        }
        self._run("write", lambda conn: upsert(conn, self.table, [row], ("event_id",)))

    def done(self, event: dict[str, Any]) -> None:
        """The webhook acknowledged (or refused) ``event``: a firing row stays, done."""
        t = self.table
        mine = (t.c.event_id == event["id"]) & (t.c.status == event["status"])
        if event["status"] == "firing":
            self._run("write", lambda conn: conn.execute(t.update().where(mine), {"state": "done"}))
        else:
            self._run("write", lambda conn: conn.execute(t.delete().where(mine)))

    def forget(self, ids: list[str], *, status: str | None = None) -> None:
        if not ids:
            return
        t = self.table
        where = t.c.event_id.in_(ids)
        if status is not None:
            where = where & (t.c.status == status)
        self._run("write", lambda conn: conn.execute(t.delete().where(where)))


@dataclass(eq=False)
class _Entry:
    event: dict[str, Any]
    attempts: int = 0  # failed attempts so far
    due: float = 0.0  # time.monotonic() of the next attempt
    sending: bool = False


class Notifier:
    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        timeout: float = 5.0,
        backoff: float = 0.5,
        max_backoff: float = 60.0,
        max_queue: int = 1000,
        metrics: Any = None,
        outbox: Outbox | None = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_queue = max_queue
        self.metrics = metrics
        self.outbox = outbox
        self._queue: deque[_Entry] = deque()
        self._cond = threading.Condition()
        self._closed = False
        #: firing events of open anomalies found in the outbox at start (see ``open_firing``)
        self._open: list[dict[str, Any]] = []
        if outbox is not None:
            self._restore(outbox.load())
        self._depth()
        self._thread = threading.Thread(target=self._run, name="aiops-notify", daemon=True)
        self._thread.start()

    # -- the queue ---------------------------------------------------------------------
    def _restore(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            try:
                event = json.loads(row["body"])
            except (TypeError, ValueError):
                continue
            if row["status"] == "firing":
                self._open.append(event)
            if row["state"] == "pending":
                self._queue.append(_Entry(event))
        if self._queue:
            log.warning("webhook events restored from the outbox: %d to send", len(self._queue))

    def open_firing(self) -> list[dict[str, Any]]:
        """The ``firing`` events the outbox held at start: anomalies still open then."""
        return list(self._open)

    def send(self, event: dict[str, Any]) -> None:
        if self.outbox is not None:  # first: the sender may acknowledge it at once
            self.outbox.put(event, time.time())
        with self._cond:
            if event.get("status") == "resolved":
                self._supersede(event["id"])
            while len(self._queue) >= self.max_queue:
                if not self._drop_oldest():
                    break
            self._queue.append(_Entry(event))
            self._depth()
            self._cond.notify_all()

    def forget(self, events: list[dict[str, Any]]) -> None:
        """Anomalies that ended without a ``resolved`` event (their series went stale)."""
        if self.outbox is not None:
            self.outbox.forget([e["id"] for e in events], status="firing")

    def _supersede(self, eid: str) -> None:
        """Drop the ``firing`` events of ``eid`` that are waiting for a retry."""
        for entry in [e for e in self._queue if e.event["id"] == eid]:
            if entry.event.get("status") == "firing" and entry.attempts and not entry.sending:
                self._queue.remove(entry)
                log.info("webhook firing event superseded by its resolved event id=%s", eid)
                self._count("superseded")

    def _drop_oldest(self) -> bool:
        for entry in self._queue:
            if not entry.sending:
                self._queue.remove(entry)
                log.error(
                    "webhook queue full (%d), oldest event dropped id=%s status=%s",
                    self.max_queue,
                    entry.event.get("id"),
                    entry.event.get("status"),
                )
                if self.metrics is not None:
                    self.metrics.webhook_queue_dropped.inc()
                if self.outbox is not None:
                    self.outbox.forget([entry.event["id"]], status=entry.event.get("status"))
                return True
        return False

    def _depth(self) -> None:
        if self.metrics is not None:
            self.metrics.webhook_queue_depth.set(len(self._queue))

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event was acknowledged or refused (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return not self._queue

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_events.labels(result).inc()

    # -- the sender thread -----------------------------------------------------------
    def _next(self) -> _Entry | None:
        """The first queued event that is due, waiting for one; None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                due = [e for e in self._queue if not e.sending]
                ready = next((e for e in due if e.due <= now), None)
                if ready is not None:
                    ready.sending = True
                    return ready
                wait = min((e.due for e in due), default=now + 60.0) - now
                self._cond.wait(max(wait, 0.001))
            return None

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while (entry := self._next()) is not None:
                outcome, problem = self._post(client, entry.event)
                self._settle(entry, outcome, problem)

    def _post(self, client: httpx.Client, event: dict[str, Any]) -> tuple[str, str]:
        body = json.dumps(event).encode()
        headers = {"Content-Type": "application/json"}
        if self.secret:  # signed at each attempt: the timestamp must be fresh
            headers.update(signed_headers(self.secret, body))
        try:
            r = client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return "retry", f"{type(exc).__name__}: {exc}"
        if r.is_success:
            return "sent", ""
        if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
            return "refused", f"status={r.status_code} body={r.text[:200]}"
        return "retry", f"HTTP {r.status_code}"

    def _settle(self, entry: _Entry, outcome: str, problem: str) -> None:
        event = entry.event
        with self._cond:
            entry.sending = False
            if outcome == "retry":
                entry.attempts += 1
                delay = min(self.max_backoff, self.backoff * 2 ** (entry.attempts - 1))
                entry.due = time.monotonic() + delay
                if entry.attempts == 1 or entry.attempts % 10 == 0:
                    log.error(
                        "webhook unreachable, event kept id=%s attempts=%d retry_in=%.1fs error=%s",
                        event["id"],
                        entry.attempts,
                        delay,
                        problem,
                    )
                self._count("retried")
                if event.get("status") == "firing" and any(
                    e.event["id"] == event["id"] and e.event.get("status") == "resolved"
                    for e in self._queue
                ):
                    self._supersede(event["id"])
            else:
                if entry in self._queue:
                    self._queue.remove(entry)
                if outcome == "sent":
                    if entry.attempts:
                        log.info(
                            "webhook event delivered id=%s after %d failed attempts",
                            event["id"],
                            entry.attempts,
                        )
                        now = time.monotonic()
                        for other in self._queue:  # the webhook is back: no more waiting
                            other.due = min(other.due, now)
                    self._count("sent")
                else:
                    log.error("webhook refused event id=%s %s", event["id"], problem)
                    self._count("refused")
            self._depth()
            self._cond.notify_all()
        if outcome != "retry" and self.outbox is not None:
            self.outbox.done(event)
