"""``POST /feedback``: an operator's verdict on an anomaly ("not an incident", "real
incident").

Bearer ``RUNBOOK_FEEDBACK_TOKEN`` (or ``RUNBOOK_ADMIN_TOKEN``): a verdict changes
what the detector pages for. The person is named by the ``X-Actor`` header (else
the caller's address). The anomaly is a series (``metric`` and ``labels``) and its
onset (``started_at``) as the feature store recorded it: an unknown one is a 404.
The verdict is stored in ``aiops_feedback`` with the anomaly's reasons at their
strongest, its peak score, value, baseline and feature row; a person's second
verdict on an anomaly replaces the first. It is audited as ``feedback``. The
detector reads the verdicts every cycle (``detector.feedback``): the answer says
what they do to the series now.

Answers: 200 ``{"feedback": "recorded"|"replaced", ..., "floors": [...]}``; 401 without
the token, 404 for an unknown anomaly, 400/422 for a bad body, 503 when the
database fails (nothing recorded: the client retries).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from aiops.core.series import series_key
from detector.feedback import Feedback, floors_at
from feature_store.store import FeatureStore
from runbooks import auth
from runbooks.events import FeedbackIn
from runbooks.limits import parse_json
from runbooks.schemas import FeedbackOut, ok
from runbooks.web import EngineDep, MetricsDep, RemediatorDep, bad_request, db_error, peer

router = APIRouter()


def actor_of(request: Request) -> str:
    """Who gives the verdict: the ``X-Actor`` header (a person), else the caller."""
    named = (request.headers.get("x-actor") or "").strip()[:200]
    return named or peer(request)


def give(store: FeatureStore, fb: FeedbackIn, actor: str, settings: Any, now: float) -> Any:
    """Record the verdict; (None: unknown anomaly) or (replaced, the series' floors)."""
    series = series_key(fb.metric, fb.labels)
    episode = store.episode(series, fb.started_at)
    if episode is None:
        return None
    row = {
        "series": series,
        "metric": fb.metric,
        "labels": dict(fb.labels),
        "started_at": float(fb.started_at),
        "verdict": fb.verdict,
        "actor": actor,
        "note": fb.note,
        "reasons": episode["reasons"],
        "score": episode["score"],
        "value": episode["value"],
        "baseline": episode["baseline"],
        "features": episode["features"],
        "given_at": now,
    }
    replaced = store.record_feedback(row)
    known = Feedback.from_rows(
        [r for r in store.feedback(metric=fb.metric, limit=100_000) if r["series"] == series],
        settings,
    )
    floors = [
        {
            "reason": f.reason,
            "floor": round(f.floor, 4),
            "threshold": round(f.threshold, 4),
            "raise_factor": round(f.raise_factor, 4),
            "cap": None if f.cap is None else round(f.cap, 4),
        }
        for f in floors_at(
            known.verdicts, now, max_raise=known.max_raise, half_life=known.half_life
        )
    ]
    return replaced, floors, episode


@router.post(
    "/feedback",
    responses=ok(FeedbackOut, 400, 401, 404, 413, 422, 503),
    dependencies=[Depends(auth.feedback_giver("/feedback"))],
)
async def feedback(
    request: Request, rem: RemediatorDep, engine: EngineDep, metrics: MetricsDep
) -> Response:
    body = await request.body()
    try:
        parse_json(body)
        fb = FeedbackIn.model_validate_json(body, strict=True)
    except ValueError as exc:
        return bad_request(metrics, "feedback", exc)
    now, actor = time.time(), actor_of(request)
    settings = request.app.state.settings
    try:
        out = await asyncio.to_thread(give, FeatureStore(engine), fb, actor, settings, now)
        if out is None:
            metrics.requests.labels("feedback", "404").inc()
            series = series_key(fb.metric, fb.labels)
            return JSONResponse(
                {"error": f"no anomaly of {series} began at {fb.started_at:.0f}"}, status_code=404
            )
        replaced, floors, episode = out
        await asyncio.to_thread(
            rem.audit.now,
            "feedback",
            None,
            metric=fb.metric,
            namespace=fb.labels.get("namespace"),
            app=fb.labels.get("app"),
            actor=actor,
            details={
                "verdict": fb.verdict,
                "series": series_key(fb.metric, fb.labels),
                "started_at": fb.started_at,
                "note": fb.note,
                "replaced": replaced,
                "reasons": sorted({r.get("reason") for r in episode["reasons"] if r.get("reason")}),
                "floors": floors,
            },
        )
    except SQLAlchemyError as exc:
        metrics.requests.labels("feedback", "503").inc()
        return db_error(exc)
    metrics.requests.labels("feedback", "200").inc()
    return JSONResponse(
        {
            "feedback": "replaced" if replaced else "recorded",
            "series": series_key(fb.metric, fb.labels),
            "started_at": fb.started_at,
            "verdict": fb.verdict,
            "floors": floors,
        }
    )
