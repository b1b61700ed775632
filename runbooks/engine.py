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

The guard chain after the policy matched (kill switch → attempts → cooldown and
circuit breaker → approval gate → dry run → act) is one method, ``_guard_chain``,
run for the first decision and again for an approved action
(``runbooks.approvals``); the action is built once, when the policy matched, and
every audit row goes through ``runbooks.audit.AuditLog``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, insert, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from aiops.core.redact import short_error
from feature_store import tables
from runbooks import approvals, killswitch, state
from runbooks.actions import ActionError, ActionResult, Target, make_action
from runbooks.audit import AuditLog
from runbooks.decision import MAX_ATTEMPTS, Decision, GuardConfig, Job
from runbooks.events import Signal
from runbooks.guards import GuardUnavailable, Limits, SqlGuards
from runbooks.policy import Policy

log = logging.getLogger("aiops.runbooks")

Rows = list[dict[str, Any]]


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
        on_incident: Callable[[Signal, Decision], None] | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.config = config
        self.kube = kube
        self.metrics = metrics
        self.on_pending = on_pending
        #: a new detector incident (its notice to the team, with feedback buttons)
        self.on_incident = on_incident
        self.guard_store = guard_store if guard_store is not None else SqlGuards()
        #: every audit row, group-committed by one writer thread with its decision
        self.audit = AuditLog(engine, metrics=metrics, on_audit=on_audit)
        self._verify: dict[str, float] = {}  # incident id -> deadline
        self._lock = threading.Lock()
        self._started = 0  # actions that passed the kill switch and started

    def close(self) -> None:
        """Finish the queued decisions and stop the writer thread."""
        self.audit.close()

    def guards(
        self, conn: Any, app: str, target: str, action: str, now: float, *, reserve: bool
    ) -> tuple[str, str] | None:
        """Cooldown, circuit breaker and blast radius: None (and, with ``reserve``, the
        action is counted atomically), or (audit kind, why). An unreachable state store
        refuses (fail closed)."""
        c = self.config
        limits = Limits(c.cooldown_seconds, c.max_hourly, c.max_daily, c.fleet_max, c.fleet_window)
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
        decision, job = self.audit.commit(self._work(sig), recover=self._duplicate(sig))
        return self._after(sig, decision, job)

    async def handle_async(self, sig: Signal) -> Decision:
        """``handle`` for the event loop: only acting and chat notices go to a thread."""
        decision, job = await self.audit.commit_async(self._work(sig), recover=self._duplicate(sig))
        notices = sig.opened and self.on_incident is not None
        if (
            job is None
            and not notices
            and (decision.kind != "approval_pending" or self.on_pending is None)
        ):
            return decision
        return await asyncio.to_thread(self._after, sig, decision, job)

    def _work(self, sig: Signal) -> Callable[[Any, Rows], tuple[Decision, Job | None]]:
        return lambda conn, rows: self._decide(conn, rows, sig)

    def _duplicate(self, sig: Signal) -> Callable[[Any, Rows, Exception], Any]:
        def recover(conn: Any, rows: Rows, exc: Exception) -> tuple[Decision, None]:
            if not isinstance(exc, IntegrityError):
                raise exc
            # the delivery was recorded first (by a concurrent request or a replica):
            # its unit was rolled back to its savepoint, only this row replaces it
            rows.append(self.audit.write(conn, "duplicate", sig, details={"key": sig.dedup_key}))
            return Decision("duplicate"), None

        return recover

    def _after(self, sig: Signal, decision: Decision, job: Job | None) -> Decision:
        """After the commit: tell the team of a new incident, run a due action, notify
        approvers."""
        if sig.opened and self.on_incident is not None:
            try:
                self.on_incident(sig, decision)
            except Exception:  # a chat outage must not stop the decision
                log.exception("incident notice failed incident=%s", decision.incident_id)
        if job is not None:
            return self._execute(sig, job)
        if decision.kind == "approval_pending" and self.on_pending is not None:
            try:
                self.on_pending(sig, decision)
            except Exception:  # a chat outage must not lose the held action
                log.exception("approval notification failed approval=%s", decision.approval_id)
        return decision

    def _decide(self, conn: Any, rows: Rows, sig: Signal) -> tuple[Decision, Job | None]:
        """Dedupe → incident → policy → the guard chain, in the caller's unit of work."""
        now = time.time()
        # the delivery first, as a write: SQLite takes its write lock right away, and a
        # replay (even a concurrent one) fails here with IntegrityError -> "duplicate"
        conn.execute(
            insert(tables.deliveries).values(
                dedup_key=sig.dedup_key, received_at=now, source=sig.source
            )
        )
        details = {
            "source": sig.source,
            "status": sig.status,
            "reasons": sig.reasons,
            "labels": sig.labels,
            **sig.details,
        }
        rows.append(self.audit.write(conn, "request", sig, details=details))
        if sig.status == "resolved":
            return self._resolve(conn, rows, sig, now), None
        incident = state.open_incident(conn, sig, now)
        iid = incident.id
        conn.execute(
            update(tables.deliveries)
            .where(tables.deliveries.c.dedup_key == sig.dedup_key)
            .values(incident_id=iid)
        )
        grouped = self._incident_rows(conn, rows, sig, incident)
        if grouped is not None:
            return grouped, None
        rule = self.policy.match(
            sig.names, sig.reasons, sig.namespace, sig.app, incident.cause or sig.cause
        )
        if rule is None:
            rows.append(self.audit.write(conn, "no_policy", sig, incident_id=iid))
            return Decision("no_policy", iid), None
        job = self._job(conn, rows, sig, iid, rule.action, rule.params, rule.risk)
        if isinstance(job, Decision):
            return job, None
        details = {
            "rule": rule.where,
            "match": rule.match,
            "reason": rule.reason,
            "risk": rule.risk,
            "would": job.what,
        }
        rows.append(
            self.audit.write(
                conn, "policy_match", sig, incident_id=iid, action=rule.action, details=details
            )
        )
        other = self._other_chain(incident, job)
        if other is not None:
            rows.append(
                self.audit.write(
                    conn,
                    "skipped_incident",
                    sig,
                    incident_id=iid,
                    action=rule.action,
                    details={"would": job.what, "why": other},
                )
            )
            return Decision("skipped_incident", iid, rule.action, other), None
        return self._guard_chain(conn, rows, sig, job, incident, now)

    def _incident_rows(
        self, conn: Any, rows: Rows, sig: Signal, incident: state.Incident
    ) -> Decision | None:
        """The audit of what the signal did to its incident: opened it, joined it as a
        member, or revised it (the detector's event after a member joined or the cause
        moved). A revision of an incident whose action chain already runs stops here."""
        iid, inc = incident.id, sig.incident
        grouped = {}
        if inc is not None:
            grouped = {
                "detector_incident": inc.id,
                "revision": inc.revision,
                "cause": inc.cause,
                "members": inc.member_count if inc.member_count is not None else len(inc.members),
                "evidence": list(inc.evidence),
            }
        if incident.created:
            rows.append(
                self.audit.write(conn, "incident_opened", sig, incident_id=iid, details=grouped)
            )
            sig.opened = inc is not None
        elif incident.joined:
            why = f"{sig.subject} is a member of an open incident"
            if incident.cause:
                why += f" whose probable cause is {incident.cause}"
            details = {"cause": incident.cause, "why": why}
            rows.append(
                self.audit.write(conn, "incident_joined", sig, incident_id=iid, details=details)
            )
        elif inc is not None:
            grouped["cause_moved"] = incident.cause_moved
            rows.append(
                self.audit.write(conn, "incident_updated", sig, incident_id=iid, details=grouped)
            )
            if incident.chain is not None:
                detail = f"its action chain {incident.chain} already runs"
                return Decision("incident_updated", iid, detail=detail)
        return None

    @staticmethod
    def _other_chain(incident: state.Incident, job: Job) -> str | None:
        """Why ``job`` may not run for ``incident``: one incident runs at most one action
        chain, on its probable cause (a member that is a symptom is not acted on)."""
        target = job.target
        service = f"{target.namespace}.{target.app}" if target.namespace and target.app else None
        if incident.joined and incident.cause and service != incident.cause:
            return (
                f"{service or target.key} is a symptom in incident {incident.id},"
                f" whose probable cause is {incident.cause}"
            )
        if incident.chain is not None and incident.chain != job.chain:
            return f"incident {incident.id} already runs its action chain {incident.chain}"
        return None

    def _job(
        self,
        conn: Any,
        rows: Rows,
        sig: Signal,
        iid: str,
        name: str,
        params: dict[str, Any],
        risk: str,
        actor: str | None = None,
    ) -> Job | Decision:
        """The action, built once for its whole way; a target it cannot act on fails."""
        target = Target(sig.namespace, sig.app, sig.labels)
        try:
            action = make_action(
                name, params, timeout=self.config.action_timeout, clients=self.kube
            )
            what = action.describe(target)
        except ActionError as exc:
            rows.append(
                self.audit.write(
                    conn,
                    "failed",
                    sig,
                    incident_id=iid,
                    action=name,
                    actor=actor,
                    result="bad_target",
                    details={"error": str(exc)},
                )
            )
            return Decision("failed", iid, name, str(exc))
        return Job(name, action, iid, target, params=dict(params), what=what, risk=risk)

    def _guard_chain(
        self,
        conn: Any,
        rows: Rows,
        sig: Signal,
        job: Job,
        incident: state.Incident | None,
        now: float,
        *,
        actor: str | None = None,
        approved: bool = False,
    ) -> tuple[Decision, Job | None]:
        """Kill switch → attempts → cooldown and breaker → approval gate → dry run → act.

        Run for the first decision and, with ``approved``, again when a held action was
        approved (its state may have changed while it waited; the gate is then passed).
        """
        iid, name, target = job.incident_id, job.name, job.target

        def refuse(kind: str, why: str, **details: Any) -> tuple[Decision, None]:
            rows.append(
                self.audit.write(
                    conn,
                    kind,
                    sig,
                    incident_id=iid,
                    action=name,
                    actor=actor,
                    details={**details, "why": why},
                )
            )
            return Decision(kind, iid, name, "" if kind == "escalated" else why), None

        off = self.switched_off(conn, target.namespace, target.app)
        if off:
            return refuse("skipped_disabled", off, would=job.what)
        if incident is not None and (incident.actions >= MAX_ATTEMPTS or incident.escalated):
            return refuse("escalated", f"{incident.actions} fixes already tried")
        held = not approved and (self.config.require_approval or job.risk == "high")
        app = sig.app or target.key
        verdict = self.guards(conn, app, target.key, name, now, reserve=not held)
        if verdict is not None:
            return refuse(*verdict)
        state.bind_chain(conn, iid, job.chain)  # the incident's one action chain
        if held:
            approval = approvals.hold(conn, sig, job, self.config, now)
            # the audit keeps what verifies the links (their tokens' digests), never
            # what grants them: the links go to the approvers only (Slack, the console)
            recorded = {k: v for k, v in approval.items() if not k.endswith("_url")}
            rows.append(
                self.audit.write(
                    conn, "approval_pending", sig, incident_id=iid, action=name, details=recorded
                )
            )
            decision = Decision("approval_pending", iid, name, job.what, approval["id"])
            decision.extra = {"approval": approval, "what": job.what, "risk": job.risk}
            return decision, None
        state.reserve(conn, app, target.key, name, iid, now, dry_run=self.config.dry_run)
        if self.config.dry_run:
            rows.append(
                self.audit.write(
                    conn,
                    "dry_run",
                    sig,
                    incident_id=iid,
                    action=name,
                    actor=actor,
                    result="dry_run",
                    details={"would": job.what},
                )
            )
            return Decision("dry_run", iid, name, job.what), None
        state.count_action(conn, iid)
        return Decision("executing", iid, name), job

    def run_approved(self, row: Any, sig: Signal, actor: str) -> Decision:
        """An approved action (``row`` from ``runbooks_approvals``) through the rest of the
        guard chain, then run: committed before it runs, like a first decision."""

        def work(conn: Any, rows: Rows) -> tuple[Decision, Job | None]:
            job = self._job(
                conn, rows, sig, row.incident_id, row.action, dict(row.params), "low", actor
            )
            if isinstance(job, Decision):
                return job, None
            incident = state.get_incident(conn, row.incident_id)
            return self._guard_chain(
                conn, rows, sig, job, incident, time.time(), actor=actor, approved=True
            )

        decision, job = self.audit.commit(work)
        return self._after(sig, decision, job)

    def _resolve(self, conn: Any, rows: Rows, sig: Signal, now: float) -> Decision:
        inc = state.close_incident(conn, sig.subject, now)
        if inc is None:
            rows.append(self.audit.write(conn, "resolved", sig, details={"incident": None}))
            return Decision("resolved")
        healed = inc.actions > 0 and not inc.escalated
        if healed:
            conn.execute(
                update(tables.incidents)
                .where(tables.incidents.c.id == inc.id)
                .values(self_healed=1)
            )
            rows.append(
                self.audit.write(conn, "verified", sig, incident_id=inc.id, result="recovered")
            )
        with self._lock:
            self._verify.pop(inc.id, None)
        details = {
            "time_to_resolve_seconds": round(now - inc.opened_at, 3),
            "self_healed": healed,
        }
        rows.append(self.audit.write(conn, "resolved", sig, incident_id=inc.id, details=details))
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

        def work(conn: Any, rows: Rows) -> bool:
            changed, row = killswitch.change(
                conn,
                halt=halt,
                scope=scope,
                actor=actor,
                reason=reason,
                now=time.time(),
                record=self.audit.record,
            )
            if row is not None:
                rows.append(row)
            return changed

        changed = self.audit.commit(work)
        if changed:
            kind = "halted" if halt else "resumed"
            log.warning("kill switch: %s %s by %s: %s", kind, scope, actor, reason)
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

    def _execute(self, sig: Signal, job: Job) -> Decision:
        iid, name = job.incident_id, job.name
        # the kill switch may have been flipped (here or by a replica) since the decision
        stop = None
        try:
            with self.engine.connect() as conn:
                halt = killswitch.halt_for(conn, job.target.namespace, job.target.app)
            if halt is not None:
                stop = f"the kill switch was turned off before the action started ({halt.why()})"
        except SQLAlchemyError as exc:  # cannot tell: fail closed
            stop = f"the kill switch's state could not be read: {short_error(exc)}"
        with self._lock:
            go = self.config.enabled and stop is None
            self._started += go
        if not go:
            why = stop or "the kill switch was turned off before the action started"
            log.warning("action not started: %s", why)
            try:
                self.audit.now(
                    "skipped_disabled", sig, incident_id=iid, action=name, details={"why": why}
                )
            except SQLAlchemyError as exc:  # the refusal stands; it is in the log
                log.error("cannot audit the refused action: %s", short_error(exc))
            return Decision("skipped_disabled", iid, name, why)
        t0 = time.perf_counter()
        try:
            result = job.action.run(job.target)
        except Exception as exc:  # a plugin bug or an unreachable API: audited, never raised
            result = ActionResult("failed", f"{type(exc).__name__}: {exc}")
        seconds = time.perf_counter() - t0
        finished = time.time()  # the row's time: when the action ended, not when written
        kind = "executed" if result.result == "executed" else result.result
        kind = kind if kind in ("executed", "blocked") else "failed"
        self.audit.now(
            kind,
            sig,
            ts=finished,
            incident_id=iid,
            action=name,
            result=result.result,
            details={"detail": result.detail, "seconds": round(seconds, 3), **result.data},
        )
        if self.metrics:
            self.metrics.actions.labels(name, result.result).inc()
        if kind == "executed":
            with self._lock:
                self._verify[iid] = time.time() + self.config.verify_seconds
        return Decision(kind, iid, name, result.detail)

    # -- verification ---------------------------------------------------------------------
    def check_verifications(self, now: float | None = None) -> list[str]:
        """Incidents whose fix did not bring the resolve event in time: ``not_recovered``."""
        now = time.time() if now is None else now
        with self._lock:
            due = [iid for iid, deadline in self._verify.items() if deadline <= now]
            for iid in due:
                del self._verify[iid]
        for iid in due:
            self.audit.commit(lambda conn, rows, iid=iid: self._not_recovered(conn, rows, iid))
        return due

    def _not_recovered(self, conn: Any, rows: Rows, iid: str) -> None:
        inc = state.get_incident(conn, iid)
        if inc is None or inc.status != "open":
            return
        subject = {
            "incident_id": iid,
            "alertname": inc.alertname,
            "metric": inc.metric,
            "namespace": inc.namespace,
            "app": inc.app,
        }
        rows.append(self.audit.write(conn, "not_recovered", None, **subject))
        if inc.actions >= MAX_ATTEMPTS:
            state.escalate(conn, iid)
            why = {"why": f"{inc.actions} fixes did not help"}
            rows.append(self.audit.write(conn, "escalated", None, **subject, details=why))

    def pending_verifications(self) -> int:
        with self._lock:
            return len(self._verify)
