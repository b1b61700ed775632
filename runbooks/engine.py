"""The remediation pipeline: dedupe → incident → policy → guards → approval → dry run → act.

``Remediator.handle(signal)`` runs DESIGN 5's guards in order for one signal and
audits every step in ``runbooks_audit``. The delivery record (dedupe), the
incident, the decision and — when an action is due — the action reservation
(what cooldowns and the circuit breaker count) commit together, before anything
runs and before the answer (``runbooks.writer`` group-commits the decisions
waiting at once in one transaction, one savepoint each): a database failure
before the commit means nothing ran and the caller answers 5xx (Alertmanager
retries); a replay after a commit is a ``duplicate``. Guard decisions hold the
app's row lock (``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on
SQLite), so racing replicas never exceed the breaker's limits.

After an action runs, the incident waits for its resolve event: within
``RUNBOOK_VERIFY_SECONDS`` it is ``verified`` (and counts as self-healed),
otherwise ``not_recovered``; a second failed fix for the same incident is
``escalated`` to humans and no further action is taken for it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from aiops.core.redact import short_error
from aiops.core.signing import approval_binding, make_approval_token, token_digest
from feature_store import tables
from runbooks import killswitch, state
from runbooks.actions import ActionError, ActionResult, Target, make_action
from runbooks.events import Signal
from runbooks.guards import GuardUnavailable, Limits, SqlGuards
from runbooks.policy import Policy, Rule
from runbooks.writer import GroupCommitter

log = logging.getLogger("aiops.runbooks")

#: failed fixes of one incident before it is handed to humans
MAX_ATTEMPTS = 2

#: one statement object for every audit row (no per-row statement building)
AUDIT_INSERT = insert(tables.audit)


@dataclass
class Decision:
    """What became of a signal (the HTTP answer's body)."""

    kind: str  # the last audit kind: duplicate, no_policy, skipped_*, dry_run, executed, ...
    incident_id: str | None = None
    action: str | None = None
    detail: str = ""
    approval_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"decision": self.kind, "incident_id": self.incident_id, "action": self.action}
        if self.detail:
            out["detail"] = self.detail
        if self.approval_id:
            out["approval_id"] = self.approval_id
        return out


@dataclass
class GuardConfig:
    enabled: bool = False
    dry_run: bool = True
    require_approval: bool = False
    cooldown_seconds: float = 900.0
    max_hourly: int = 3
    max_daily: int = 10
    action_timeout: float = 60.0
    verify_seconds: float = 300.0
    approval_ttl: float = 3600.0
    approval_secret: str | None = None
    public_url: str = "http://localhost:8080"


class Remediator:
    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        config: GuardConfig,
        *,
        kube: Any = None,
        on_audit: Callable[[dict[str, Any]], None] | None = None,
        metrics: Any = None,
        on_pending: Callable[[Signal, Decision], None] | None = None,
        guard_store: Any = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.config = config
        self.kube = kube
        self.on_audit = on_audit
        self.metrics = metrics
        self.on_pending = on_pending
        self.guard_store = guard_store if guard_store is not None else SqlGuards()
        self._verify: dict[str, float] = {}  # incident id -> deadline
        self._lock = threading.Lock()
        self._started = 0  # actions that passed the kill switch and started
        #: decisions and lone audit rows are group-committed by one writer thread
        self.writer = GroupCommitter(engine)

    # -- audit --------------------------------------------------------------------------
    def _audit(self, conn: Any, kind: str, sig: Signal | None, **kw: Any) -> dict[str, Any]:
        row = {
            "ts": time.time(),
            "kind": kind,
            "incident_id": kw.pop("incident_id", None),
            "alertname": sig.alertname if sig else kw.pop("alertname", None),
            "metric": sig.metric if sig else kw.pop("metric", None),
            "namespace": sig.namespace if sig else kw.pop("namespace", None),
            "app": sig.app if sig else kw.pop("app", None),
            "action": kw.pop("action", None),
            "result": kw.pop("result", None),
            "actor": kw.pop("actor", "webhook"),
            "details": kw.pop("details", None),
        }
        t0 = time.perf_counter()
        conn.execute(AUDIT_INSERT, row)
        if self.metrics:
            self.metrics.audit_write.observe(time.perf_counter() - t0)
            self.metrics.events.labels(kind).inc()
        return row

    def _published(self, rows: list[dict[str, Any]]) -> None:
        if self.on_audit:
            for row in rows:
                self.on_audit(row)

    def audit_now(self, kind: str, sig: Signal | None = None, **kw: Any) -> None:
        """One audit row, committed before this returns (e.g. a refused signature)."""
        row = self.writer.run(lambda conn: self._audit(conn, kind, sig, **kw))
        self._published([row])

    def guards(
        self, conn: Any, app: str, target: str, action: str, now: float, *, reserve: bool
    ) -> tuple[str, str] | None:
        """Cooldown and circuit breaker: None (and, with ``reserve``, the action is counted
        atomically), or (audit kind, why). An unreachable state store refuses (fail closed)."""
        limits = Limits(self.config.cooldown_seconds, self.config.max_hourly, self.config.max_daily)
        try:
            if reserve:
                return self.guard_store.reserve(conn, app, target, action, now, limits)
            return self.guard_store.check(conn, app, target, action, now, limits)
        except GuardUnavailable as exc:
            log.error("guard state unreachable, action refused: %s", exc)
            return "skipped_guard_unavailable", f"guard state store unreachable: {exc}"

    # -- the pipeline ---------------------------------------------------------------------
    def handle(self, sig: Signal) -> Decision:
        """Decide (committed with its audit rows before this returns), then act."""
        decision, job, rows = self.writer.run(*self._decision(sig))
        return self._after(sig, decision, job, rows)

    async def handle_async(self, sig: Signal) -> Decision:
        """``handle`` for the event loop: only acting and chat notices go to a thread."""
        decision, job, rows = await self.writer.run_async(*self._decision(sig))
        if job is None and (decision.kind != "approval_pending" or self.on_pending is None):
            self._published(rows)
            return decision
        return await asyncio.to_thread(self._after, sig, decision, job, rows)

    def _decision(
        self, sig: Signal
    ) -> tuple[Callable[[Any], Any], Callable[[Any, Exception], Any]]:
        """The unit of work of one signal for the group committer, and its recovery."""

        def work(conn: Any) -> tuple[Decision, Any, list[dict[str, Any]]]:
            rows: list[dict[str, Any]] = []
            decision, job = self._decide(conn, sig, rows)
            return decision, job, rows

        def duplicate(conn: Any, exc: Exception) -> tuple[Decision, Any, list[dict[str, Any]]]:
            if not isinstance(exc, IntegrityError):
                raise exc
            # the delivery was recorded first (by a concurrent request or a replica):
            # its unit was rolled back to its savepoint, only this row replaces it
            row = self._audit(conn, "duplicate", sig, details={"key": sig.dedup_key})
            return Decision("duplicate"), None, [row]

        return work, duplicate

    def _after(
        self,
        sig: Signal,
        decision: Decision,
        job: tuple[Rule, str, Target] | None,
        rows: list[dict[str, Any]],
    ) -> Decision:
        """After the commit: publish the audit rows, run a due action, notify approvers."""
        self._published(rows)
        if job is not None:
            return self._execute(sig, *job)
        if decision.kind == "approval_pending" and self.on_pending is not None:
            try:
                self.on_pending(sig, decision)
            except Exception:  # a chat outage must not lose the held action
                log.exception("approval notification failed approval=%s", decision.approval_id)
        return decision

    def _decide(
        self, conn: Any, sig: Signal, rows: list[dict[str, Any]]
    ) -> tuple[Decision, tuple[Rule, str, Target] | None]:
        now = time.time()
        # the delivery first, as a write: SQLite takes its write lock right away, and a
        # replay (even a concurrent one) fails here with IntegrityError -> "duplicate"
        conn.execute(
            insert(tables.deliveries).values(
                dedup_key=sig.dedup_key, received_at=now, source=sig.source
            )
        )
        rows.append(
            self._audit(
                conn,
                "request",
                sig,
                details={
                    "source": sig.source,
                    "status": sig.status,
                    "reasons": sig.reasons,
                    "labels": sig.labels,
                    **sig.details,
                },
            )
        )
        if sig.status == "resolved":
            return self._resolve(conn, sig, now, rows), None
        incident = state.open_incident(conn, sig, now)
        if incident.created:
            rows.append(self._audit(conn, "incident_opened", sig, incident_id=incident.id))
        conn.execute(
            update(tables.deliveries)
            .where(tables.deliveries.c.dedup_key == sig.dedup_key)
            .values(incident_id=incident.id)
        )
        iid = incident.id
        rule = self.policy.match(sig.names, sig.reasons, sig.namespace, sig.app)
        if rule is None:
            rows.append(self._audit(conn, "no_policy", sig, incident_id=iid))
            return Decision("no_policy", iid), None
        target = Target(sig.namespace, sig.app, sig.labels)
        try:
            action = make_action(
                rule.action, rule.params, timeout=self.config.action_timeout, clients=self.kube
            )
            what = action.describe(target)
        except ActionError as exc:
            rows.append(
                self._audit(
                    conn,
                    "failed",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    result="bad_target",
                    details={"error": str(exc)},
                )
            )
            return Decision("failed", iid, rule.action, str(exc)), None
        rows.append(
            self._audit(
                conn,
                "policy_match",
                sig,
                incident_id=iid,
                action=rule.action,
                details={
                    "rule": rule.where,
                    "match": rule.match,
                    "reason": rule.reason,
                    "risk": rule.risk,
                    "would": what,
                },
            )
        )
        off = self.switched_off(conn, sig.namespace, sig.app)
        if off:
            rows.append(
                self._audit(
                    conn,
                    "skipped_disabled",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    details={"would": what, "why": off},
                )
            )
            return Decision("skipped_disabled", iid, rule.action, off), None
        if incident.actions >= MAX_ATTEMPTS or incident.escalated:
            rows.append(
                self._audit(
                    conn,
                    "escalated",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    details={"why": f"{incident.actions} fixes already tried"},
                )
            )
            return Decision("escalated", iid, rule.action), None
        held = self.config.require_approval or rule.risk == "high"
        verdict = self.guards(
            conn, sig.app or target.key, target.key, rule.action, now, reserve=not held
        )
        if verdict is not None:
            kind, detail = verdict
            rows.append(
                self._audit(
                    conn, kind, sig, incident_id=iid, action=rule.action, details={"why": detail}
                )
            )
            return Decision(kind, iid, rule.action, detail), None
        if held:
            approval = self._hold(conn, sig, iid, rule, target, now)
            # the audit keeps what verifies the links (their tokens' digests), never
            # what grants them: the links go to the approvers only (Slack, the console)
            recorded = {k: v for k, v in approval.items() if not k.endswith("_url")}
            rows.append(
                self._audit(
                    conn,
                    "approval_pending",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    details=recorded,
                )
            )
            decision = Decision("approval_pending", iid, rule.action, what, approval["id"])
            decision.extra = {"approval": approval, "what": what, "risk": rule.risk}
            return decision, None
        state.reserve(
            conn,
            sig.app or target.key,
            target.key,
            rule.action,
            iid,
            now,
            dry_run=self.config.dry_run,
        )
        if self.config.dry_run:
            rows.append(
                self._audit(
                    conn,
                    "dry_run",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    result="dry_run",
                    details={"would": what},
                )
            )
            return Decision("dry_run", iid, rule.action, what), None
        state.count_action(conn, iid)
        return Decision("executing", iid, rule.action), (rule, iid, target)

    def _hold(
        self, conn: Any, sig: Signal, iid: str, rule: Rule, target: Target, now: float
    ) -> dict[str, Any]:
        aid = uuid.uuid4().hex
        expires = now + self.config.approval_ttl
        conn.execute(
            insert(tables.approvals).values(
                id=aid,
                created_at=now,
                expires_at=expires,
                state="pending",
                incident_id=iid,
                app=sig.app,
                namespace=sig.namespace,
                target=target.key,
                action=rule.action,
                params=rule.params,
                request={
                    "labels": sig.labels,
                    "alertname": sig.alertname,
                    "metric": sig.metric,
                    "reasons": sig.reasons,
                },
            )
        )
        out: dict[str, Any] = {"id": aid, "expires_at": expires}
        secret = self.config.approval_secret
        if secret:
            binding = approval_binding(aid, rule.action, target.key, rule.params)
            base = self.config.public_url.rstrip("/")
            for decision in ("approve", "reject"):
                token = make_approval_token(secret, binding, expires, decision)
                out[f"{decision}_url"] = f"{base}/{decision}?id={aid}&token={token}"
                out[f"{decision}_token_sha256"] = token_digest(token)
        return out

    def _resolve(self, conn: Any, sig: Signal, now: float, rows: list[dict[str, Any]]) -> Decision:
        inc = state.close_incident(conn, sig.subject, now)
        if inc is None:
            rows.append(self._audit(conn, "resolved", sig, details={"incident": None}))
            return Decision("resolved")
        healed = inc.actions > 0 and not inc.escalated
        if healed:
            conn.execute(
                update(tables.incidents)
                .where(tables.incidents.c.id == inc.id)
                .values(self_healed=1)
            )
            rows.append(self._audit(conn, "verified", sig, incident_id=inc.id, result="recovered"))
        with self._lock:
            self._verify.pop(inc.id, None)
        rows.append(
            self._audit(
                conn,
                "resolved",
                sig,
                incident_id=inc.id,
                details={
                    "time_to_resolve_seconds": round(now - inc.opened_at, 3),
                    "self_healed": healed,
                },
            )
        )
        return Decision("resolved", inc.id, detail=f"after {now - inc.opened_at:.0f}s")

    # -- the kill switch --------------------------------------------------------------------
    def switched_off(self, conn: Any, namespace: str | None, app: str | None) -> str | None:
        """Why the kill switch stops actions on (namespace, app) now, or None."""
        if not self.config.enabled:
            return "the kill switch is off (RUNBOOK_AUTOFIX_ENABLED=false)"
        halt = killswitch.halt_for(conn, namespace, app)
        return None if halt is None else halt.why()

    def set_halt(self, *, halt: bool, scope: str, actor: str, reason: str) -> bool:
        """Halt or resume ``scope`` for every replica (committed before this returns)."""
        changed, row = self.writer.run(
            lambda conn: killswitch.change(
                conn, halt=halt, scope=scope, actor=actor, reason=reason, now=time.time()
            )
        )
        if row is not None:
            log.warning("kill switch: %s %s by %s: %s", row["kind"], scope, actor, reason)
            self._published([row])
            if self.metrics:
                self.metrics.events.labels(row["kind"]).inc()
        return changed

    # -- acting ---------------------------------------------------------------------------
    def disable(self) -> int:
        """Flip the kill switch off now: no action that has not started will start (each
        checks it again, under the same lock, right before it runs). Returns how many
        actions had started."""
        with self._lock:
            self.config.enabled = False
            started = self._started
        return started

    def _execute(self, sig: Signal, rule: Rule, iid: str, target: Target) -> Decision:
        # the kill switch may have been flipped (here or by a replica) since the decision
        stop = None
        try:
            with self.engine.connect() as conn:
                halt = killswitch.halt_for(conn, target.namespace, target.app)
            if halt is not None:
                stop = f"the kill switch was turned off before the action started ({halt.why()})"
        except SQLAlchemyError as exc:  # cannot tell: fail closed
            stop = f"the kill switch's state could not be read: {_short(exc)}"
        with self._lock:
            go = self.config.enabled and stop is None
            self._started += go
        if not go:
            why = stop or "the kill switch was turned off before the action started"
            log.warning("action not started: %s", why)
            try:
                with self.engine.begin() as conn:
                    row = self._audit(
                        conn,
                        "skipped_disabled",
                        sig,
                        incident_id=iid,
                        action=rule.action,
                        details={"why": why},
                    )
                self._published([row])
            except SQLAlchemyError as exc:  # the refusal stands; it is in the log
                log.error("cannot audit the refused action: %s", _short(exc))
            return Decision("skipped_disabled", iid, rule.action, why)
        action = make_action(
            rule.action, rule.params, timeout=self.config.action_timeout, clients=self.kube
        )
        t0 = time.perf_counter()
        try:
            result = action.run(target)
        except Exception as exc:  # a plugin bug or an unreachable API: audited, never raised
            result = ActionResult("failed", f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - t0
        kind = "executed" if result.result == "executed" else result.result
        kind = kind if kind in ("executed", "blocked") else "failed"
        with self.engine.begin() as conn:
            row = self._audit(
                conn,
                kind,
                sig,
                incident_id=iid,
                action=rule.action,
                result=result.result,
                details={"detail": result.detail, "seconds": round(seconds, 3), **result.data},
            )
        self._published([row])
        if self.metrics:
            self.metrics.actions.labels(rule.action, result.result).inc()
        if kind == "executed":
            with self._lock:
                self._verify[iid] = time.time() + self.config.verify_seconds
        return Decision(kind, iid, rule.action, result.detail)

    def check_verifications(self, now: float | None = None) -> list[str]:
        """Incidents whose fix did not bring the resolve event in time: ``not_recovered``."""
        now = time.time() if now is None else now
        with self._lock:
            due = [iid for iid, deadline in self._verify.items() if deadline <= now]
            for iid in due:
                del self._verify[iid]
        rows = []
        for iid in due:
            with self.engine.begin() as conn:
                inc = state.get_incident(conn, iid)
                if inc is None or inc.status != "open":
                    continue
                rows.append(
                    self._audit(
                        conn,
                        "not_recovered",
                        None,
                        incident_id=iid,
                        alertname=inc.alertname,
                        metric=inc.metric,
                        namespace=inc.namespace,
                        app=inc.app,
                    )
                )
                if inc.actions >= MAX_ATTEMPTS:
                    state.escalate(conn, iid)
                    rows.append(
                        self._audit(
                            conn,
                            "escalated",
                            None,
                            incident_id=iid,
                            alertname=inc.alertname,
                            metric=inc.metric,
                            namespace=inc.namespace,
                            app=inc.app,
                            details={"why": f"{inc.actions} fixes did not help"},
                        )
                    )
        self._published(rows)
        return due

    def pending_verifications(self) -> int:
        with self._lock:
            return len(self._verify)


def _short(exc: Exception) -> str:
    return short_error(exc)


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def incident_stats(engine: Engine) -> dict[str, float]:
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


class ApprovalError(Exception):
    """An approve/reject request refused: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _approval_signal(row: Any) -> Signal:
    req = row.request or {}
    return Signal(
        source="anomalies" if req.get("metric") and not req.get("alertname") else "alertmanager",
        dedup_key=f"approval:{row.id}",
        subject="",
        status="firing",
        alertname=req.get("alertname"),
        metric=req.get("metric"),
        reasons=list(req.get("reasons") or []),
        namespace=row.namespace,
        app=row.app,
        labels=dict(req.get("labels") or {}),
        at=time.time(),
    )


def decide_approval(
    rem: Remediator,
    approval_id: str,
    token: str,
    decision: str,
    actor: str,
    *,
    audit_refusal: Callable[[str], bool] | None = None,
) -> Decision:
    """Approve or reject a held action with a signed, single-use, unexpired token.

    A forged or foreign token is refused (403) and audited ``unauthorized`` when
    ``audit_refusal(why)`` says so (the webhook's refusal counter: the first of a source
    each minute, the rest aggregated), so guessed tokens cannot fill the audit."""
    from aiops.core.signing import check_approval_token

    secret = rem.config.approval_secret
    if not secret:
        raise ApprovalError(403, "RUNBOOK_APPROVAL_SECRET is not set: links cannot be verified")
    a = tables.approvals
    now = time.time()
    rows: list[dict[str, Any]] = []
    with rem.engine.begin() as conn:
        row = conn.execute(select(a).where(a.c.id == approval_id)).first()
        if row is None:
            raise ApprovalError(404, f"no approval {approval_id}")
        sig = _approval_signal(row)
        binding = approval_binding(row.id, row.action, row.target, row.params)
        problem = check_approval_token(secret, token, binding, decision, now)
        if problem and problem != "token expired":
            if audit_refusal is not None and not audit_refusal(problem):
                raise ApprovalError(403, problem)
            rem.audit_now(
                "unauthorized",
                sig,
                incident_id=row.incident_id,
                action=row.action,
                actor=actor,
                details={"approval": row.id, "why": problem},
            )
            raise ApprovalError(403, problem)
        if row.state != "pending":
            raise ApprovalError(
                409, f"approval {row.id} is already {row.state} (links are single-use)"
            )
        if problem == "token expired" or now > row.expires_at:
            conn.execute(update(a).where(a.c.id == row.id).values(state="expired"))
            rows.append(
                rem._audit(
                    conn,
                    "expired",
                    sig,
                    incident_id=row.incident_id,
                    action=row.action,
                    actor=actor,
                )
            )
            expired = True
        else:
            expired = False
            new_state = "approved" if decision == "approve" else "rejected"
            done = conn.execute(
                update(a)
                .where(and_(a.c.id == row.id, a.c.state == "pending"))
                .values(state=new_state, decided_by=actor, decided_at=now)
            ).rowcount
            if done != 1:
                raise ApprovalError(409, f"approval {row.id} was decided meanwhile")
            rows.append(
                rem._audit(
                    conn,
                    new_state,
                    sig,
                    incident_id=row.incident_id,
                    action=row.action,
                    actor=actor,
                    details={"approval": row.id},
                )
            )
    rem._published(rows)
    if expired:
        raise ApprovalError(410, f"approval {approval_id} expired")
    if decision != "approve":
        return Decision("rejected", row.incident_id, row.action)
    return _run_approved(rem, row, sig, actor)


def _run_approved(rem: Remediator, row: Any, sig: Signal, actor: str) -> Decision:
    """After approval the remaining guards run again: state may have changed meanwhile."""
    rows: list[dict[str, Any]] = []
    rule = Rule(match=sig.name, action=row.action, params=dict(row.params), where="approval")
    target = Target(row.namespace, row.app, sig.labels)
    now = time.time()
    job = None
    with rem.engine.begin() as conn:
        off = rem.switched_off(conn, row.namespace, row.app)
        if off:
            rows.append(
                rem._audit(
                    conn,
                    "skipped_disabled",
                    sig,
                    incident_id=row.incident_id,
                    action=row.action,
                    actor=actor,
                    details={"why": off},
                )
            )
            decision = Decision("skipped_disabled", row.incident_id, row.action, off)
        else:
            verdict = rem.guards(
                conn, row.app or row.target, row.target, row.action, now, reserve=True
            )
            if verdict is not None:
                rows.append(
                    rem._audit(
                        conn,
                        verdict[0],
                        sig,
                        incident_id=row.incident_id,
                        action=row.action,
                        details={"why": verdict[1]},
                    )
                )
                decision = Decision(verdict[0], row.incident_id, row.action, verdict[1])
            else:
                state.reserve(
                    conn,
                    row.app or row.target,
                    row.target,
                    row.action,
                    row.incident_id,
                    now,
                    dry_run=rem.config.dry_run,
                )
                if rem.config.dry_run:
                    what = make_action(row.action, rule.params, timeout=1).describe(target)
                    rows.append(
                        rem._audit(
                            conn,
                            "dry_run",
                            sig,
                            incident_id=row.incident_id,
                            action=row.action,
                            result="dry_run",
                            details={"would": what},
                        )
                    )
                    decision = Decision("dry_run", row.incident_id, row.action, what)
                else:
                    state.count_action(conn, row.incident_id)
                    decision = Decision("executing", row.incident_id, row.action)
                    job = (rule, row.incident_id, target)
    rem._published(rows)
    if job is not None:
        return rem._execute(sig, *job)
    return decision
