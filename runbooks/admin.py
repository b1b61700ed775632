"""What a person does to the webhook: approve or reject a held action, silence an
alert, halt or resume remediation.

- ``GET /approve``, ``GET /reject``: a signed single-use link (``runbooks.approvals``);
  403 forged, 404 unknown, 409 already decided, 410 expired;
- ``GET /ack``: silence an alert in Alertmanager (its v2 API) for some minutes;
  the admin bearer token, since a silence hides pages;
- ``GET /killswitch``: the master setting and the scopes halted at run time;
  ``POST /killswitch``: halt or resume a scope for every replica (admin token).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from runbooks import approvals, auth, killswitch
from runbooks.engine import Remediator
from runbooks.limits import parse_json
from runbooks.schemas import AckOut, DecisionOut, KillSwitchIn, KillSwitchOut, ok
from runbooks.web import (
    EngineDep,
    MetricsDep,
    RemediatorDep,
    SettingsDep,
    StateDep,
    bad_request,
    db_error,
    error,
    peer,
)

router = APIRouter()

ApprovalId = Query(min_length=1, max_length=64)
Token = Query(min_length=1, max_length=2000)


def _approval(
    decision: str, approval_id: str, token: str, request: Request, rem: Remediator, state: Any
) -> Response:
    source = request.client.host if request.client else "unknown"

    def audit_refusal(why: str) -> bool:  # forged links count as refusals (runbooks.access)
        return state.refusals.record(f"/{decision}", source, why)

    try:
        d = approvals.decide(
            rem, approval_id, token, decision, actor=peer(request), audit_refusal=audit_refusal
        )
    except approvals.ApprovalError as exc:
        return error(exc.status, str(exc))
    except SQLAlchemyError as exc:
        return db_error(exc)
    return JSONResponse(d.as_dict())


@router.get("/approve", responses=ok(DecisionOut, 403, 404, 409, 410, 422, 503))
def approve(
    request: Request, rem: RemediatorDep, state: StateDep, id: str = ApprovalId, token: str = Token
) -> Response:
    return _approval("approve", id, token, request, rem, state)


@router.get("/reject", responses=ok(DecisionOut, 403, 404, 409, 410, 422, 503))
def reject(
    request: Request, rem: RemediatorDep, state: StateDep, id: str = ApprovalId, token: str = Token
) -> Response:
    return _approval("reject", id, token, request, rem, state)


@router.get(
    "/ack",
    responses=ok(AckOut, 401, 409, 422, 429, 502),
    dependencies=[
        Depends(auth.admin("/ack", "alerts cannot be silenced")),
        Depends(auth.rate_limited(None)),
    ],
)
async def ack(
    request: Request,
    rem: RemediatorDep,
    settings: SettingsDep,
    alertname: str = Query(min_length=1, max_length=200, pattern=r"^[A-Za-z_:][A-Za-z0-9_:.-]*$"),
    minutes: int = Query(60, ge=1, le=1440),
) -> Response:
    """Silence ``alertname`` in Alertmanager for ``minutes`` (its v2 API); a silence
    hides pages, so it takes the admin bearer token like the kill switch."""
    if not settings.alertmanager_url:
        return error(409, "RUNBOOK_ALERTMANAGER_URL is not set: cannot create silences")
    start = datetime.now(timezone.utc)
    body = {
        "matchers": [{"name": "alertname", "value": alertname, "isRegex": False, "isEqual": True}],
        "startsAt": start.isoformat(),
        "endsAt": (start + timedelta(minutes=minutes)).isoformat(),
        "createdBy": f"aiops-webhook ({peer(request)})",
        "comment": f"acknowledged through the runbook webhook for {minutes} min",
    }
    url = settings.alertmanager_url.rstrip("/") + "/api/v2/silences"
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        return error(502, f"Alertmanager unreachable: {type(exc).__name__}")
    if not r.is_success:
        return error(502, f"Alertmanager answered HTTP {r.status_code}: {r.text[:200]}")
    silence = r.json().get("silenceID")
    with contextlib.suppress(SQLAlchemyError):
        await asyncio.to_thread(
            rem.audit.now,
            "acked",
            None,
            alertname=alertname,
            actor=peer(request),
            details={"silence_id": silence, "minutes": minutes},
        )
    return JSONResponse({"silence_id": silence, "alertname": alertname, "minutes": minutes})


def switch_state(conn: Any, rem: Remediator) -> dict[str, Any]:
    halts = killswitch.halts(conn)
    return {
        "enabled": rem.config.enabled and not any(h.scope == killswitch.ALL for h in halts),
        "autofix_enabled": rem.config.enabled,
        "halts": [h.as_dict() for h in halts],
    }


@router.get("/killswitch", responses=ok(KillSwitchOut, 503))
def killswitch_get(rem: RemediatorDep, engine: EngineDep) -> Response:
    """The kill switch: the master setting and the scopes halted at run time."""
    try:
        with engine.connect() as conn:
            return JSONResponse(switch_state(conn, rem))
    except SQLAlchemyError as exc:
        return db_error(exc)


@router.post(
    "/killswitch",
    responses=ok(KillSwitchOut, 400, 401, 413, 422, 503),
    dependencies=[Depends(auth.admin("/killswitch", "the kill switch cannot be changed"))],
)
async def killswitch_post(
    request: Request, rem: RemediatorDep, engine: EngineDep, metrics: MetricsDep
) -> Response:
    """Halt (``enabled: false``) or resume a scope for every replica, at once."""
    body = await request.body()
    try:
        parse_json(body)
        change = KillSwitchIn.model_validate_json(body, strict=True)
        killswitch.check_scope(change.scope)
    except killswitch.ScopeError as exc:
        metrics.requests.labels("killswitch", "422").inc()
        return error(422, f"scope: {exc}")
    except ValueError as exc:
        return bad_request(metrics, "killswitch", exc)
    who = " ".join(request.headers.get("x-actor", "").split())[:100]
    actor = f"{peer(request)} ({who})" if who else peer(request)
    try:
        changed = await asyncio.to_thread(
            rem.set_halt,
            halt=not change.enabled,
            scope=change.scope,
            actor=actor,
            reason=change.reason,
        )
        with engine.connect() as conn:
            out = switch_state(conn, rem)
    except SQLAlchemyError as exc:
        metrics.requests.labels("killswitch", "503").inc()
        return db_error(exc)
    metrics.requests.labels("killswitch", "200").inc()
    return JSONResponse({**out, "changed": changed})
