"""``GET /healthz`` (the database, the guard state store, the kill switch: 503 when
an action could not be guarded) and ``GET /metrics`` (Prometheus exposition)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from runbooks import killswitch
from runbooks.schemas import HealthOut, ok
from runbooks.web import EngineDep, RemediatorDep, SettingsDep, StateDep

router = APIRouter()


def ping(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@router.get("/healthz", responses={**ok(HealthOut), 503: {"model": HealthOut}})
def healthz(rem: RemediatorDep, engine: EngineDep, settings: SettingsDep) -> Response:
    db = ping(engine)
    halted: list[str] = []
    if db:
        try:
            with engine.connect() as conn:
                halted = [h.scope for h in killswitch.halts(conn)]
        except SQLAlchemyError:
            db = False
    body: dict[str, Any] = {
        "status": "ok" if db else "database_down",
        "database": db,
        "enabled": rem.config.enabled and killswitch.ALL not in halted and db,
        "halted": halted,
        "dry_run": settings.autofix_dry_run,
        "rules": len(rem.policy),
        "verifications_pending": rem.pending_verifications(),
        "guard_state": rem.guard_store.name,
    }
    if hasattr(rem.guard_store, "ping"):
        body["redis"] = rem.guard_store.ping()
        if not body["redis"]:
            body["status"] = "redis_down"
            db = False
    return JSONResponse(body, status_code=200 if db else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def prom(state: StateDep) -> Response:
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)
