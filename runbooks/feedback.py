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
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
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


def audit_of(
    fb: FeedbackIn, actor: str, replaced: bool, floors: list[Any], episode: Any, via: str
) -> dict[str, Any]:
    """The ``feedback`` audit row's columns, whoever recorded the verdict (``via``: api,
    link, slack or cli)."""
    return {
        "metric": fb.metric,
        "namespace": fb.labels.get("namespace"),
        "app": fb.labels.get("app"),
        "actor": actor,
        "details": {
            "verdict": fb.verdict,
            "series": series_key(fb.metric, fb.labels),
            "started_at": fb.started_at,
            "note": fb.note,
            "replaced": replaced,
            "via": via,
            "reasons": sorted({r.get("reason") for r in episode["reasons"] if r.get("reason")}),
            "floors": floors,
        },
    }


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
        row = audit_of(fb, actor, replaced, floors, episode, "api")
        await asyncio.to_thread(rem.audit.now, "feedback", None, **row)
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


# -- one-click signed links (the console's buttons; chat and mail can carry them) -----------

#: how long a feedback link works
LINK_TTL_SECONDS = 7 * 86400.0


def feedback_binding(series: str, started_at: float, person: str) -> str:
    """What a feedback link is bound to: one anomaly and one person."""
    import hashlib
    import json

    blob = json.dumps(["feedback", series, float(started_at), person], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def feedback_link(
    secret: str,
    metric: str,
    labels: dict[str, str],
    started_at: float,
    person: str,
    verdict: str,
    now: float,
) -> str:
    """The relative one-click link that records ``person``'s ``verdict`` on the anomaly
    (signed with ``RUNBOOK_APPROVAL_SECRET``, expiring after ``LINK_TTL_SECONDS``)."""
    import json
    from urllib.parse import urlencode

    from aiops.core.signing import make_approval_token

    binding = feedback_binding(series_key(metric, labels), started_at, person)
    token = make_approval_token(secret, binding, now + LINK_TTL_SECONDS, verdict)
    query = {
        "metric": metric,
        "labels": json.dumps(labels, sort_keys=True, separators=(",", ":")),
        "started_at": repr(float(started_at)),
        "by": person,
        "verdict": verdict,
        "token": token,
    }
    return "/feedback/link?" + urlencode(query)


def _already(
    store: FeatureStore, series: str, started_at: float, person: str, verdict: str
) -> bool:
    from sqlalchemy import and_, select

    from feature_store import tables

    t = tables.feedback
    with store.engine.connect() as conn:
        row = conn.execute(
            select(t.c.verdict).where(
                and_(t.c.series == series, t.c.started_at == started_at, t.c.actor == person)
            )
        ).first()
    return row is not None and row.verdict == verdict


@router.get("/feedback/link", responses=ok(FeedbackOut, 403, 404, 409, 410, 422, 503))
async def feedback_by_link(
    request: Request,
    rem: RemediatorDep,
    engine: EngineDep,
    metrics: MetricsDep,
    metric: str = Query(min_length=1, max_length=200),
    labels: str = Query(max_length=4096, description="the series' labels as a JSON object"),
    started_at: float = Query(ge=0),
    by: str = Query(min_length=1, max_length=200, description="the person the link is for"),
    verdict: Literal["false_alarm", "incident"] = Query(),
    token: str = Query(min_length=1, max_length=4096),
    note: str = Query("", max_length=1000),
) -> Response:
    """One click records ``by``'s verdict: the token (``RUNBOOK_APPROVAL_SECRET``) is bound
    to the anomaly, the person and the verdict, and expires; a forged one is a 403, an
    expired one a 410, a second click on the same verdict a 409."""
    import json

    from aiops.core.signing import check_approval_token

    settings = request.app.state.settings
    secret = settings.approval_secret.get_secret_value() if settings.approval_secret else None
    if not secret:
        return JSONResponse(
            {"error": "RUNBOOK_APPROVAL_SECRET is not set: feedback links cannot be checked"},
            status_code=409,
        )
    try:
        parsed = json.loads(labels)
        fb = FeedbackIn(
            metric=metric, labels=parsed, started_at=started_at, verdict=verdict, note=note
        )
    except ValueError:  # no link the webhook made: its labels are a JSON object of strings
        metrics.requests.labels("feedback", "403").inc()
        return JSONResponse({"error": "the link was altered (labels)"}, status_code=403)
    series = series_key(fb.metric, fb.labels)
    now = time.time()
    why = check_approval_token(
        secret, token, feedback_binding(series, started_at, by), verdict, now
    )
    if why is not None:
        status = 410 if why == "token expired" else 403
        metrics.requests.labels("feedback", str(status)).inc()
        # audited like every refusal: the first of a source in a minute has a row of its
        # own, the rest one aggregated row (a flood of forged links is no audit flood)
        await request.app.state.refusals.refuse(request, "/feedback/link", why)
        return JSONResponse({"error": why}, status_code=status)
    store = FeatureStore(engine)
    try:
        if await asyncio.to_thread(_already, store, series, float(started_at), by, verdict):
            metrics.requests.labels("feedback", "409").inc()
            return JSONResponse(
                {"error": f"{by} already said {verdict} of this anomaly"}, status_code=409
            )
        out = await asyncio.to_thread(give, store, fb, by, settings, now)
        if out is None:
            metrics.requests.labels("feedback", "404").inc()
            return JSONResponse(
                {"error": f"no anomaly of {series} began at {started_at:.0f}"}, status_code=404
            )
        replaced, floors, episode = out
        row = audit_of(fb, by, replaced, floors, episode, "link")
        await asyncio.to_thread(rem.audit.now, "feedback", None, **row)
    except SQLAlchemyError as exc:
        metrics.requests.labels("feedback", "503").inc()
        return db_error(exc)
    metrics.requests.labels("feedback", "200").inc()
    return JSONResponse(
        {
            "feedback": "replaced" if replaced else "recorded",
            "series": series,
            "started_at": fb.started_at,
            "verdict": fb.verdict,
            "floors": floors,
        }
    )
