"""The approval gate: held actions, their signed links, and deciding them.

An action the policy marks ``risk: high`` (or every action, with
``RUNBOOK_AUTOFIX_REQUIRE_APPROVAL``) is held by ``hold``: a ``runbooks_approvals`` row
and, with ``RUNBOOK_APPROVAL_SECRET``, a pair of signed single-use links
(approve, reject) bound to the approval, its action, target and parameters.
``decide`` checks a link (or a Slack button, which carries the same token) and,
for an approval, hands the action back to the guard chain
(``Remediator.run_approved``): kill switch, attempts, cooldown and breaker run
again, because their state may have changed while the action waited.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import and_, insert, select, update

from aiops.core.signing import (
    approval_binding,
    check_approval_token,
    make_approval_token,
    token_digest,
)
from feature_store import tables
from runbooks.audit import AuditLog
from runbooks.decision import Decision, GuardConfig, Job
from runbooks.events import Signal


class Approver(Protocol):
    """What deciding an approval needs of the guard chain (``runbooks.engine.Remediator``)."""

    config: GuardConfig
    audit: AuditLog

    def run_approved(self, row: Any, sig: Signal, actor: str) -> Decision: ...


class ApprovalError(Exception):
    """An approve/reject request refused: ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def hold(conn: Any, sig: Signal, job: Job, config: GuardConfig, now: float) -> dict[str, Any]:
    """Hold ``job`` for approval; its id, expiry and (with a secret) its signed links."""
    aid = uuid.uuid4().hex
    expires = now + config.approval_ttl
    conn.execute(
        insert(tables.approvals).values(
            id=aid,
            created_at=now,
            expires_at=expires,
            state="pending",
            incident_id=job.incident_id,
            app=sig.app,
            namespace=sig.namespace,
            target=job.target.key,
            action=job.name,
            params=job.params,
            request={
                "labels": sig.labels,
                "alertname": sig.alertname,
                "metric": sig.metric,
                "reasons": sig.reasons,
            },
        )
    )
    out: dict[str, Any] = {"id": aid, "expires_at": expires}
    secret = config.approval_secret
    if secret:
        binding = approval_binding(aid, job.name, job.target.key, job.params)
        base = config.public_url.rstrip("/")
        for decision in ("approve", "reject"):
            token = make_approval_token(secret, binding, expires, decision)
            out[f"{decision}_url"] = f"{base}/{decision}?id={aid}&token={token}"
            out[f"{decision}_token_sha256"] = token_digest(token)
    return out


def approval_signal(row: Any) -> Signal:
    """The signal a held action came from, rebuilt from its approval row."""
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


def decide(
    rem: Approver,
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
    secret = rem.config.approval_secret
    if not secret:
        raise ApprovalError(403, "RUNBOOK_APPROVAL_SECRET is not set: links cannot be verified")
    now = time.time()
    a = tables.approvals

    def work(conn: Any, rows: list[dict[str, Any]]) -> tuple[Any, Signal, ApprovalError | None]:
        row = conn.execute(select(a).where(a.c.id == approval_id)).first()
        if row is None:
            raise ApprovalError(404, f"no approval {approval_id}")
        sig = approval_signal(row)
        binding = approval_binding(row.id, row.action, row.target, row.params)
        problem = check_approval_token(secret, token, binding, decision, now)
        subject = {"incident_id": row.incident_id, "action": row.action, "actor": actor}
        if problem and problem != "token expired":
            if audit_refusal is not None and not audit_refusal(problem):
                raise ApprovalError(403, problem)
            details = {"approval": row.id, "why": problem}
            rows.append(rem.audit.write(conn, "unauthorized", sig, **subject, details=details))
            return row, sig, ApprovalError(403, problem)  # the refusal's row is committed
        if row.state != "pending":
            raise ApprovalError(
                409, f"approval {row.id} is already {row.state} (links are single-use)"
            )
        if problem == "token expired" or now > row.expires_at:
            conn.execute(update(a).where(a.c.id == row.id).values(state="expired"))
            rows.append(rem.audit.write(conn, "expired", sig, **subject))
            return row, sig, ApprovalError(410, f"approval {approval_id} expired")
        new_state = "approved" if decision == "approve" else "rejected"
        done = conn.execute(
            update(a)
            .where(and_(a.c.id == row.id, a.c.state == "pending"))
            .values(state=new_state, decided_by=actor, decided_at=now)
        ).rowcount
        if done != 1:
            raise ApprovalError(409, f"approval {row.id} was decided meanwhile")
        rows.append(rem.audit.write(conn, new_state, sig, **subject, details={"approval": row.id}))
        return row, sig, None

    row, sig, refused = rem.audit.commit(work)
    if refused is not None:
        raise refused
    if decision != "approve":
        return Decision("rejected", row.incident_id, row.action)
    return rem.run_approved(row, sig, actor)
