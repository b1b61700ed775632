"""Incidents and guard state in SQL (shared by replicas, survives restarts).

All functions take the caller's connection: they run inside the one transaction
of a decision. ``check_guards`` first takes the app's lock row (``SELECT ...
FOR UPDATE`` on PostgreSQL; on SQLite the transaction already holds the write
lock), so two replicas deciding for one app serialise and the breaker's counts
are exact.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, insert, select, update

from aiops.core.series import series_key
from feature_store import tables
from runbooks.events import Signal


@dataclass
class Incident:
    id: str
    status: str
    opened_at: float
    events: int
    actions: int
    escalated: bool
    created: bool = False
    alertname: str | None = None
    metric: str | None = None
    namespace: str | None = None
    app: str | None = None
    #: the probable cause's service (a detector incident's, else its own namespace.app)
    cause: str | None = None
    #: ``action:target`` of the one action chain it runs (None until one starts)
    chain: str | None = None
    #: the signal joined it as a member (an Alertmanager notification about a series
    #: or a service of a detector incident), it is not the incident's own subject
    joined: bool = False
    #: the detector's incident event moved its probable cause
    cause_moved: bool = False


def _incident(row: Any, created: bool = False, joined: bool = False) -> Incident:
    return Incident(
        row.id,
        row.status,
        row.opened_at,
        row.events,
        row.actions,
        bool(row.escalated),
        created,
        row.alertname,
        row.metric,
        row.namespace,
        row.app,
        row.cause,
        row.chain,
        joined,
    )


def _member_of(conn: Any, sig: Signal) -> Any:
    """The oldest open incident holding the signal's series, or else its service."""
    t, m = tables.incidents, tables.incident_members
    about = m.c.subject == sig.subject
    if sig.service is not None:
        about = about | (m.c.service == sig.service)
    return conn.execute(
        select(t)
        .join(m, m.c.incident_id == t.c.id)
        .where(and_(t.c.status == "open", about))
        .order_by((m.c.subject == sig.subject).desc(), t.c.opened_at)
        .limit(1)
    ).first()


def record_members(conn: Any, iid: str, members: list[tuple[str, str | None]]) -> int:
    """Add the (series key, service) members the incident does not hold yet."""
    m = tables.incident_members
    have = set(conn.execute(select(m.c.subject).where(m.c.incident_id == iid)).scalars())
    new = {}
    for subject, service in members:
        if subject not in have and subject not in new:
            new[subject] = {"incident_id": iid, "subject": subject, "service": service}
    if new:
        conn.execute(insert(m), list(new.values()))
    return len(new)


def _detector_members(sig: Signal) -> list[tuple[str, str | None]]:
    """A detector incident event's members: its cause (the event's series) first."""
    out: list[tuple[str, str | None]] = [(series_key(sig.metric or "", sig.labels), sig.cause)]
    if sig.incident is not None:
        out += [(series_key(x.metric, x.labels), x.service) for x in sig.incident.members]
    return out


def _adopt(conn: Any, sig: Signal) -> Any:
    """The oldest open incident of one of a detector incident's member series (an
    Alertmanager page about it came first): it becomes the detector incident's."""
    t = tables.incidents
    subjects = [subject for subject, _ in _detector_members(sig)]
    row = conn.execute(
        select(t)
        .where(and_(t.c.subject.in_(subjects), t.c.status == "open"))
        .order_by(t.c.opened_at)
        .limit(1)
    ).first()
    if row is None:
        return None
    conn.execute(update(t).where(t.c.id == row.id).values(subject=sig.subject))
    return row


def open_incident(conn: Any, sig: Signal, now: float) -> Incident:
    """The open incident of the signal's subject (one more event), or the open incident
    it is a member of (an Alertmanager notification about a detector incident's series
    or service joins it), or a new one. A detector incident event records its members,
    and its probable cause when that moved."""
    t = tables.incidents
    row = conn.execute(
        select(t).where(and_(t.c.subject == sig.subject, t.c.status == "open"))
    ).first()
    joined = False
    if row is None and sig.incident is None:
        row = _member_of(conn, sig)
        joined = row is not None
    elif row is None:  # a page about a member may have opened an incident first
        row = _adopt(conn, sig)
    if row is not None:
        conn.execute(update(t).where(t.c.id == row.id).values(events=t.c.events + 1))
        inc = _incident(row, joined=joined)
        if sig.incident is not None:
            record_members(conn, row.id, _detector_members(sig))
            if sig.cause != row.cause:
                conn.execute(update(t).where(t.c.id == row.id).values(cause=sig.cause))
                inc.cause, inc.cause_moved = sig.cause, True
        return inc
    iid = uuid.uuid4().hex[:16]
    values = {
        "id": iid,
        "subject": sig.subject,
        "status": "open",
        "opened_at": now,
        "events": 1,
        "actions": 0,
        "self_healed": 0,
        "escalated": 0,
        "alertname": sig.alertname,
        "metric": sig.metric,
        "namespace": sig.namespace,
        "app": sig.app,
        "cause": sig.cause,
    }
    conn.execute(insert(t).values(**values))
    if sig.incident is not None:
        record_members(conn, iid, _detector_members(sig))
    return Incident(
        iid,
        "open",
        now,
        1,
        0,
        False,
        True,
        sig.alertname,
        sig.metric,
        sig.namespace,
        sig.app,
        sig.cause,
    )


def bind_chain(conn: Any, iid: str, chain: str) -> None:
    """The incident's one action chain is ``chain`` (``action:target``) from now on."""
    t = tables.incidents
    conn.execute(update(t).where(and_(t.c.id == iid, t.c.chain.is_(None))).values(chain=chain))


def close_incident(conn: Any, subject: str, now: float) -> Incident | None:
    t = tables.incidents
    row = conn.execute(select(t).where(and_(t.c.subject == subject, t.c.status == "open"))).first()
    if row is None:
        return None
    conn.execute(
        update(t)
        .where(t.c.id == row.id)
        .values(status="resolved", resolved_at=now, events=t.c.events + 1)
    )
    return _incident(row)


def get_incident(conn: Any, iid: str) -> Incident | None:
    row = conn.execute(select(tables.incidents).where(tables.incidents.c.id == iid)).first()
    return None if row is None else _incident(row)


def escalate(conn: Any, iid: str) -> None:
    conn.execute(update(tables.incidents).where(tables.incidents.c.id == iid).values(escalated=1))


def count_action(conn: Any, iid: str) -> None:
    t = tables.incidents
    conn.execute(update(t).where(t.c.id == iid).values(actions=t.c.actions + 1))


#: the lock row of the whole fleet (the blast radius); no app is named ``*``
FLEET = "*"


def _lock_app(conn: Any, app: str) -> None:
    g = tables.guard_locks
    if conn.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        conn.execute(pg_insert(g).values(app=app).on_conflict_do_nothing())
        conn.execute(select(g.c.app).where(g.c.app == app).with_for_update())
    else:
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        conn.execute(lite_insert(g).values(app=app).on_conflict_do_nothing())


def check_guards(
    conn: Any,
    app: str,
    target: str,
    action: str,
    now: float,
    *,
    cooldown: float,
    hourly: int,
    daily: int,
    fleet: int = 3,
    fleet_window: float = 600.0,
) -> tuple[str, str] | None:
    """None if the action may go ahead, else (audit kind, why)."""
    _lock_app(conn, app)
    a = tables.actions
    last = conn.execute(
        select(func.max(a.c.ts)).where(and_(a.c.target == target, a.c.action == action))
    ).scalar()
    # cooldown 0 is off: a replica's reservation may carry a later time than this
    # decision's ``now`` (taken before the lock), which is no reason to refuse
    if last is not None and cooldown > 0 and now - last < cooldown:
        left = cooldown - (now - last)
        return (
            "skipped_cooldown",
            f"{action} on {target} ran {now - last:.0f}s ago; {left:.0f}s left",
        )
    in_hour = conn.execute(
        select(func.count()).where(and_(a.c.app == app, a.c.ts > now - 3600))
    ).scalar()
    if in_hour >= hourly:
        return "skipped_circuit", f"{in_hour} actions for {app} in the last hour (limit {hourly})"
    in_day = conn.execute(
        select(func.count()).where(and_(a.c.app == app, a.c.ts > now - 86400))
    ).scalar()
    if in_day >= daily:
        return "skipped_circuit", f"{in_day} actions for {app} in the last day (limit {daily})"
    _lock_app(conn, FLEET)  # always after the app's lock: no two decisions wait on each other
    in_window = fleet_count(conn, now, fleet_window)
    if in_window >= fleet:
        return "skipped_blast_radius", blast_radius_why(in_window, fleet, fleet_window)
    return None


def blast_radius_why(count: int, fleet: int, window: float) -> str:
    return (
        f"{count} actions across all apps in the last {window:.0f}s"
        f" (RUNBOOK_MAX_ACTIONS_PER_WINDOW={fleet}): a storm must not become a restart storm"
    )


def reserve(
    conn: Any, app: str, target: str, action: str, iid: str, now: float, *, dry_run: bool
) -> None:
    conn.execute(
        insert(tables.actions).values(
            ts=now,
            app=app,
            target=target,
            action=action,
            incident_id=iid,
            dry_run=1 if dry_run else 0,
        )
    )


def circuit_counts(conn: Any, now: float) -> dict[str, int]:
    a = tables.actions
    rows = conn.execute(select(a.c.app, func.count()).where(a.c.ts > now - 3600).group_by(a.c.app))
    return {app: n for app, n in rows}


def fleet_count(conn: Any, now: float, window: float) -> int:
    """Actions (and dry-run reservations) across every app within ``window`` seconds."""
    a = tables.actions
    return int(conn.execute(select(func.count()).where(a.c.ts > now - window)).scalar() or 0)


def cooldowns(conn: Any, now: float, cooldown: float) -> dict[tuple[str, str], float]:
    """Seconds left per (target, action) whose last action is younger than ``cooldown``."""
    if cooldown <= 0:
        return {}
    a = tables.actions
    rows = conn.execute(
        select(a.c.target, a.c.action, func.max(a.c.ts))
        .where(a.c.ts > now - cooldown)
        .group_by(a.c.target, a.c.action)
    )
    return {(t, act): round(last + cooldown - now, 3) for t, act, last in rows}


def incident_stats(engine: Any) -> dict[str, float]:
    """Open, total and resolved incidents, their events, mean time to resolve and how
    many healed themselves after a fix (the scrape-time gauges)."""
    t = tables.incidents
    with engine.connect() as conn:
        open_ = conn.execute(select(func.count()).where(t.c.status == "open")).scalar() or 0
        total = conn.execute(select(func.count()).select_from(t)).scalar() or 0
        events = conn.execute(select(func.coalesce(func.sum(t.c.events), 0))).scalar() or 0
        resolved = conn.execute(
            select(
                func.count(),
                func.avg(t.c.resolved_at - t.c.opened_at),
                func.coalesce(func.sum(t.c.self_healed), 0),
            ).where(and_(t.c.status == "resolved"))
        ).one()
    return {
        "open": float(open_),
        "incidents": float(total),
        "events": float(events),
        "resolved": float(resolved[0] or 0),
        "mttr": float(resolved[1] or 0.0),
        "self_healed": float(resolved[2] or 0),
    }
