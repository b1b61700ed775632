"""The two inputs that can trigger an action: detector events and Alertmanager.

- ``POST /anomalies``: 401 for a missing, forged or stale signature (audited),
  429 + Retry-After above ``RUNBOOK_RATE_LIMIT``, 400/422 for bad JSON or fields,
  503 when the database fails before the decision committed, else 200 with the
  decision;
- ``POST /alertmanager``: never 429 (Alertmanager drops every non-2xx but 5xx);
  401 for a wrong bearer token, 400/422 for a bad payload, 503 (retried by
  Alertmanager) when the database fails before the commit, else 200.

Both turn their payload into ``runbooks.events.Signal`` and hand it to the guard
chain (``runbooks.engine.Remediator``).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from runbooks import auth
from runbooks.events import AlertmanagerPayload, AnomalyEvent, from_alerts, from_anomaly
from runbooks.limits import parse_json
from runbooks.schemas import AlertsOut, DecisionOut, ok
from runbooks.web import MetricsDep, RemediatorDep, bad_request, db_error

router = APIRouter()


@router.post(
    "/anomalies",
    responses=ok(DecisionOut, 400, 401, 413, 422, 429, 503),
    # DESIGN 5: the signature first, then the rate limit, before dedupe
    dependencies=[Depends(auth.signed_event), Depends(auth.rate_limited("anomalies"))],
)
async def anomalies(request: Request, rem: RemediatorDep, metrics: MetricsDep) -> Response:
    body = await request.body()
    try:
        parse_json(body)  # 400 malformed, 422 nested too deeply
        event = AnomalyEvent.model_validate_json(body, strict=True)
    except ValueError as exc:
        return bad_request(metrics, "anomalies", exc)
    try:
        decision = await rem.handle_async(from_anomaly(event))
    except SQLAlchemyError as exc:
        metrics.requests.labels("anomalies", "503").inc()
        return db_error(exc)
    metrics.requests.labels("anomalies", "200").inc()
    return JSONResponse(decision.as_dict())


@router.post(
    "/alertmanager",
    responses=ok(AlertsOut, 400, 401, 413, 422, 503),
    dependencies=[Depends(auth.alertmanager)],
)
async def alertmanager(request: Request, rem: RemediatorDep, metrics: MetricsDep) -> Response:
    body = await request.body()
    try:
        parse_json(body)
        # strict: a number is no time and a boolean no number (as the OpenAPI says)
        payload = AlertmanagerPayload.model_validate_json(body, strict=True)
    except ValueError as exc:
        return bad_request(metrics, "alertmanager", exc)
    out = []
    try:
        for sig in from_alerts(payload):
            out.append(await rem.handle_async(sig))
    except SQLAlchemyError as exc:
        metrics.requests.labels("alertmanager", "503").inc()
        return db_error(exc)
    metrics.requests.labels("alertmanager", "200").inc()
    return JSONResponse({"alerts": [d.as_dict() for d in out]})
