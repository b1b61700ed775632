"""``POST /changes``: CI/CD announces a deploy or a configuration change.

Signed like the detector's events (``RUNBOOK_WEBHOOK_SECRET``, ``runbooks.auth``),
rate-limited, stored once per id in the feature store (``aiops_changes``, a replay
is ``"recorded": false``) and audited as ``change``. The detector reads the recent
changes every cycle: a change of a service shortly before an incident's onset in
it is evidence, and names the probable cause (``detector.incidents``).

Answers: 200 ``{"change": id, "service": ..., "recorded": true|false}``; 401 for a
bad signature, 429 above the rate limit, 400/422 for a bad body, 503 when the
database fails (nothing recorded: the announcer retries).
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from feature_store.store import FeatureStore
from runbooks import auth
from runbooks.events import ChangeEvent
from runbooks.limits import parse_json
from runbooks.schemas import ChangeOut, ok
from runbooks.web import EngineDep, MetricsDep, RemediatorDep, bad_request, db_error, peer

router = APIRouter()


@router.post(
    "/changes",
    responses=ok(ChangeOut, 400, 401, 413, 422, 429, 503),
    dependencies=[Depends(auth.signed("/changes")), Depends(auth.rate_limited("changes"))],
)
async def changes(
    request: Request, rem: RemediatorDep, engine: EngineDep, metrics: MetricsDep
) -> Response:
    body = await request.body()
    try:
        parse_json(body)
        change = ChangeEvent.model_validate_json(body, strict=True)
    except ValueError as exc:
        return bad_request(metrics, "changes", exc)
    now = time.time()
    service = change.service or ""
    namespace, _, app = service.partition(".")
    try:
        recorded = await asyncio.to_thread(
            FeatureStore(engine).record_change,
            change.id,
            at=change.at if change.at is not None else now,
            service=service,
            kind=change.kind,
            description=change.description,
            source="webhook",
            received_at=now,
        )
        if recorded:
            await asyncio.to_thread(
                rem.audit.now,
                "change",
                None,
                namespace=namespace or None,
                app=app or None,
                actor=peer(request),
                details={
                    "id": change.id,
                    "service": service,
                    "kind": change.kind,
                    "description": change.description,
                    "at": change.at if change.at is not None else now,
                },
            )
    except SQLAlchemyError as exc:
        metrics.requests.labels("changes", "503").inc()
        return db_error(exc)
    metrics.requests.labels("changes", "200").inc()
    return JSONResponse({"change": change.id, "service": service, "recorded": recorded})
