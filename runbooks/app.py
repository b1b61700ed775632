"""The webhook's HTTP service (FastAPI): inputs, approvals, the audit, health, metrics.

Answers:
- ``POST /anomalies``: 401 for a missing, forged or stale signature (audited),
  429 + Retry-After above ``RUNBOOK_RATE_LIMIT``, 400/422 for bad JSON or fields,
  503 when the database fails before the decision committed, else 200 with the
  decision;
- ``POST /alertmanager``: never 429 (Alertmanager drops every non-2xx but 5xx);
  401 for a wrong bearer token, 400/422 for a bad payload, 503 (retried by
  Alertmanager) when the database fails before the commit, else 200.

Every route: 413 for a body over ``RUNBOOK_MAX_BODY_BYTES`` (before it is read),
422 for JSON nested too deeply, and errors as ``{"error": "..."}`` — FastAPI's own
parameter validation included. ``runbooks.schemas`` documents every answer in the
OpenAPI (``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
)
from pydantic import ValidationError
from sqlalchemy import Engine, or_, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiops.core.redact import short_error
from aiops.core.settings import Settings
from aiops.core.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_event
from feature_store import tables
from runbooks import console, killswitch, slack
from runbooks.access import ReadAccess, Refusals, read_refusal
from runbooks.engine import (
    ApprovalError,
    GuardConfig,
    Remediator,
    decide_approval,
    ping,
)
from runbooks.events import (
    AlertmanagerPayload,
    AnomalyEvent,
    from_alerts,
    from_anomaly,
    visible_nul,
)
from runbooks.guards import make_guards
from runbooks.limits import BadBody, BodyLimit, parse_json
from runbooks.metrics import RunbookMetrics, StateCollector
from runbooks.policy import Policy
from runbooks.schemas import (
    AckOut,
    AlertsOut,
    AuditOut,
    DecisionOut,
    HealthOut,
    KillSwitchIn,
    KillSwitchOut,
    errors,
    install_openapi,
    ok,
)

log = logging.getLogger("aiops.webhook")


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts of ``2 × rate``."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(2 * rate, 1.0)
        self.tokens = self.capacity
        self.at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if allowed, else seconds to wait."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class Broadcaster:
    """Audit rows to every open ``GET /events`` stream (thread-safe publish)."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None

    def publish(self, row: dict[str, Any]) -> None:
        loop = self.loop
        if loop is None:
            return
        for q in list(self.queues):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, row)


def guard_config(s: Settings) -> GuardConfig:
    return GuardConfig(
        enabled=s.autofix_enabled,
        dry_run=s.autofix_dry_run,
        require_approval=s.require_approval,
        cooldown_seconds=s.cooldown_seconds,
        max_hourly=s.circuit_max_hourly,
        max_daily=s.circuit_max_daily,
        action_timeout=s.action_timeout_seconds,
        verify_seconds=s.verify_seconds,
        approval_ttl=s.approval_ttl_seconds,
        approval_secret=s.approval_secret.get_secret_value() if s.approval_secret else None,
        public_url=s.public_url,
    )


def _error(status: int, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


class EventStreamResponse(StreamingResponse):
    media_type = "text/event-stream"


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's parameter validation, answered like every other error of the webhook."""
    errs = exc.errors() if isinstance(exc, RequestValidationError) else []
    if not errs:
        return _error(422, "invalid request")
    err = errs[0]
    where = ".".join(str(p) for p in err["loc"]) or "request"
    return _error(422, f"{where}: {err['msg']}")


def _http_error(request: Request, exc: Exception) -> Response:
    """405 listing every method of the path in ``Allow`` (Starlette names only the first
    route's when one path has a route per method), as ``{"error": ...}``."""
    status = getattr(exc, "status_code", 500)
    if status != 405:
        headers = getattr(exc, "headers", None) or {}
        return _error(status, str(getattr(exc, "detail", "")) or "error", **headers)
    allowed: set[str] = set()
    for route in request.app.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            allowed |= set(getattr(route, "methods", None) or ())
    if "GET" in allowed:
        allowed.add("HEAD")
    return _error(405, "method not allowed", Allow=", ".join(sorted(allowed)))


def _db_error(exc: Exception) -> JSONResponse:
    msg = short_error(exc)
    log.error("database error, nothing executed: %s", msg)
    return _error(503, f"database unavailable, nothing was executed: {msg}")


def create_app(
    settings: Settings,
    engine: Engine,
    policy: Policy,
    *,
    kube: Any = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    registry = registry if registry is not None else CollectorRegistry()
    metrics = RunbookMetrics(registry, settings)
    guard_store = make_guards(settings.redis_url)
    events = Broadcaster()
    rem = Remediator(
        engine,
        policy,
        guard_config(settings),
        kube=kube,
        on_audit=events.publish,
        metrics=metrics,
        guard_store=guard_store,
    )
    registry.register(StateCollector(engine, settings, guard_store, lambda: rem.config.enabled))
    limiter = RateLimiter(settings.rate_limit)
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    am_token = (
        settings.alertmanager_token.get_secret_value() if settings.alertmanager_token else None
    )
    admin_token = settings.admin_token.get_secret_value() if settings.admin_token else None
    refusals = Refusals(
        lambda actor, details: rem.audit_now("unauthorized", None, actor=actor, details=details),
        registry,
    )
    reads = ReadAccess(settings)
    stop = threading.Event()

    def verifier() -> None:
        while not stop.wait(1.0):
            try:
                rem.check_verifications()
            except Exception:  # the database may be down: try again next second
                log.exception("verification check failed")
            try:
                refusals.flush()  # the aggregated refusals of the minute that ended
            except Exception:
                log.exception("writing the aggregated refusals failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.loop = asyncio.get_running_loop()
        thread = threading.Thread(target=verifier, name="runbooks-verify", daemon=True)
        thread.start()
        log.info(
            "webhook started enabled=%s dry_run=%s rules=%d",
            settings.autofix_enabled,
            settings.autofix_dry_run,
            len(policy),
        )
        if settings.read_open:
            log.warning(
                "RUNBOOK_READ_OPEN=true: /audit, /events and /console answer anyone who"
                " can reach the webhook"
            )
        elif not reads.configured:
            log.warning("RUNBOOK_READ_TOKEN is not set: /audit, /events and /console answer 401")
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            with contextlib.suppress(Exception):
                refusals.flush(everything=True)
            rem.writer.close()

    app = FastAPI(title="aiops runbook webhook", lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    install_openapi(app, alertmanager_token=bool(am_token), read_open=settings.read_open)
    app.state.remediator = rem
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.engine = engine
    app.state.refusals = refusals
    app.state.reads = reads
    rem.on_pending = slack.pending_notifier(settings)
    app.include_router(slack.router)
    app.include_router(console.router)

    @app.post("/anomalies", responses=ok(DecisionOut, 400, 401, 413, 422, 429, 503))
    async def anomalies(request: Request) -> Response:
        body = await request.body()
        now = time.time()
        if not secret:
            problem = "RUNBOOK_WEBHOOK_SECRET is not set: signed events cannot be verified"
        else:
            problem = verify_event(
                secret,
                request.headers.get(TIMESTAMP_HEADER),
                request.headers.get(SIGNATURE_HEADER),
                body,
                now,
            )
        if problem:
            metrics.requests.labels("anomalies", "401").inc()
            await refusals.refuse(request, "/anomalies", problem)
            return _error(401, problem)
        wait = limiter.take()  # DESIGN 5: after the signature, before dedupe
        if wait:
            metrics.requests.labels("anomalies", "429").inc()
            return _error(429, "rate limit exceeded", **{"Retry-After": str(max(1, round(wait)))})
        try:
            parse_json(body)  # 400 malformed, 422 nested too deeply
            event = AnomalyEvent.model_validate_json(body, strict=True)
        except ValueError as exc:
            return _bad(metrics, "anomalies", exc)
        try:
            decision = await rem.handle_async(from_anomaly(event))
        except SQLAlchemyError as exc:
            metrics.requests.labels("anomalies", "503").inc()
            return _db_error(exc)
        metrics.requests.labels("anomalies", "200").inc()
        return JSONResponse(decision.as_dict())

    @app.post("/alertmanager", responses=ok(AlertsOut, 400, 401, 413, 422, 503))
    async def alertmanager(request: Request) -> Response:
        body = await request.body()
        if am_token:
            refused = await bearer_refusal(request, am_token, "/alertmanager", "")
            if refused is not None:
                return refused
        try:
            parse_json(body)
            # strict: a number is no time and a boolean no number (as the OpenAPI says)
            payload = AlertmanagerPayload.model_validate_json(body, strict=True)
        except ValueError as exc:
            return _bad(metrics, "alertmanager", exc)
        out = []
        try:
            for sig in from_alerts(payload):
                out.append(await rem.handle_async(sig))
        except SQLAlchemyError as exc:
            metrics.requests.labels("alertmanager", "503").inc()
            return _db_error(exc)
        metrics.requests.labels("alertmanager", "200").inc()
        return JSONResponse({"alerts": [d.as_dict() for d in out]})

    def _approval(decision: str, approval_id: str, token: str, request: Request) -> Response:
        source = request.client.host if request.client else "unknown"

        def audit_refusal(why: str) -> bool:  # forged links count as refusals (module doc)
            return app.state.refusals.record(f"/{decision}", source, why)

        try:
            d = decide_approval(
                rem, approval_id, token, decision, actor=_peer(request), audit_refusal=audit_refusal
            )
        except ApprovalError as exc:
            return _error(exc.status, str(exc))
        except SQLAlchemyError as exc:
            return _db_error(exc)
        return JSONResponse(d.as_dict())

    @app.get("/approve", responses=ok(DecisionOut, 403, 404, 409, 410, 422, 503))
    def approve(
        request: Request,
        id: str = Query(min_length=1, max_length=64),
        token: str = Query(min_length=1, max_length=2000),
    ) -> Response:
        return _approval("approve", id, token, request)

    @app.get("/reject", responses=ok(DecisionOut, 403, 404, 409, 410, 422, 503))
    def reject(
        request: Request,
        id: str = Query(min_length=1, max_length=64),
        token: str = Query(min_length=1, max_length=2000),
    ) -> Response:
        return _approval("reject", id, token, request)

    @app.get("/ack", responses=ok(AckOut, 401, 409, 422, 429, 502))
    async def ack(
        request: Request,
        alertname: str = Query(
            min_length=1, max_length=200, pattern=r"^[A-Za-z_:][A-Za-z0-9_:.-]*$"
        ),
        minutes: int = Query(60, ge=1, le=1440),
    ) -> Response:
        """Silence ``alertname`` in Alertmanager for ``minutes`` (its v2 API); a silence
        hides pages, so it takes the admin bearer token like the kill switch."""
        refused = await admin_refusal(request, "/ack", "alerts cannot be silenced")
        if refused is not None:
            return refused
        wait = limiter.take()
        if wait:
            return _error(429, "rate limit exceeded", **{"Retry-After": str(max(1, round(wait)))})
        if not settings.alertmanager_url:
            return _error(409, "RUNBOOK_ALERTMANAGER_URL is not set: cannot create silences")
        start = datetime.now(timezone.utc)
        body = {
            "matchers": [
                {"name": "alertname", "value": alertname, "isRegex": False, "isEqual": True}
            ],
            "startsAt": start.isoformat(),
            "endsAt": (start + timedelta(minutes=minutes)).isoformat(),
            "createdBy": f"aiops-webhook ({_peer(request)})",
            "comment": f"acknowledged through the runbook webhook for {minutes} min",
        }
        url = settings.alertmanager_url.rstrip("/") + "/api/v2/silences"
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(url, json=body)
        except httpx.HTTPError as exc:
            return _error(502, f"Alertmanager unreachable: {type(exc).__name__}")
        if not r.is_success:
            return _error(502, f"Alertmanager answered HTTP {r.status_code}: {r.text[:200]}")
        silence = r.json().get("silenceID")
        with contextlib.suppress(SQLAlchemyError):
            await asyncio.to_thread(
                rem.audit_now,
                "acked",
                None,
                alertname=alertname,
                actor=_peer(request),
                details={"silence_id": silence, "minutes": minutes},
            )
        return JSONResponse({"silence_id": silence, "alertname": alertname, "minutes": minutes})

    @app.get("/audit", responses=ok(AuditOut, 401, 422, 503))
    async def audit(
        request: Request,
        n: int = Query(100, ge=1, le=5000),
        since: float | None = Query(None, ge=0),
        kind: str | None = Query(None, max_length=64),
        alertname: str | None = Query(None, max_length=200),
        contains: str | None = Query(None, max_length=200),
    ) -> Response:
        refused = await read_refusal(request, "/audit")
        if refused is not None:
            return refused
        # incoming text is stored with a NUL written out (runbooks.events): filter alike
        kind, alertname, contains = (visible_nul(v) for v in (kind, alertname, contains))
        t = tables.audit
        q = select(t).order_by(t.c.id.desc()).limit(n)
        if since is not None:
            q = q.where(t.c.ts >= since)
        if kind:
            q = q.where(t.c.kind == kind)
        if alertname:
            q = q.where(or_(t.c.alertname == alertname, t.c.metric == alertname))

        def read() -> list[dict[str, Any]]:
            with engine.connect() as conn:
                return [dict(r._mapping) for r in conn.execute(q)]

        try:
            rows = await asyncio.to_thread(read)
        except SQLAlchemyError as exc:
            return _db_error(exc)
        if contains:  # the needle encoded as the rows are, quotes and backslashes too
            needle = json.dumps(contains)[1:-1].lower()
            rows = [r for r in rows if needle in json.dumps(r, default=str).lower()]
        return JSONResponse({"rows": rows, "count": len(rows)})

    @app.get("/events", response_class=EventStreamResponse, responses=errors(401))
    async def stream(request: Request) -> Response:
        refused = await read_refusal(request, "/events")
        if refused is not None:
            return refused
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        events.queues.add(queue)

        async def gen() -> AsyncIterator[str]:
            try:
                yield ": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        row = await asyncio.wait_for(queue.get(), timeout=15)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: audit\ndata: {json.dumps(row, default=str)}\n\n"
            finally:
                events.queues.discard(queue)

        return EventStreamResponse(gen())

    def switch_state(conn: Any) -> dict[str, Any]:
        halts = killswitch.halts(conn)
        return {
            "enabled": rem.config.enabled and not any(h.scope == killswitch.ALL for h in halts),
            "autofix_enabled": rem.config.enabled,
            "halts": [h.as_dict() for h in halts],
        }

    async def bearer_refusal(
        request: Request, token: str | None, route: str, unset: str
    ) -> Response | None:
        """None for a request bearing ``token``; else its 401 (audited). ``unset`` is
        the answer when no token is configured."""
        import hmac

        auth = request.headers.get("authorization", "")
        if token and hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
            return None
        why = "missing or wrong bearer token" if token else unset
        metrics.requests.labels(route.strip("/"), "401").inc()
        await refusals.refuse(request, route, why)
        return _error(401, why)

    async def admin_refusal(request: Request, route: str, what: str) -> Response | None:
        unset = f"RUNBOOK_ADMIN_TOKEN is not set: {what} over HTTP"
        return await bearer_refusal(request, admin_token, route, unset)

    @app.get("/killswitch", responses=ok(KillSwitchOut, 503))
    def killswitch_get() -> Response:
        """The kill switch: the master setting and the scopes halted at run time."""
        try:
            with engine.connect() as conn:
                return JSONResponse(switch_state(conn))
        except SQLAlchemyError as exc:
            return _db_error(exc)

    @app.post("/killswitch", responses=ok(KillSwitchOut, 400, 401, 413, 422, 503))
    async def killswitch_post(request: Request) -> Response:
        """Halt (``enabled: false``) or resume a scope for every replica, at once."""
        refused = await admin_refusal(request, "/killswitch", "the kill switch cannot be changed")
        if refused is not None:
            return refused
        body = await request.body()
        try:
            parse_json(body)
            change = KillSwitchIn.model_validate_json(body, strict=True)
            killswitch.check_scope(change.scope)
        except killswitch.ScopeError as exc:
            metrics.requests.labels("killswitch", "422").inc()
            return _error(422, f"scope: {exc}")
        except ValueError as exc:
            return _bad(metrics, "killswitch", exc)
        who = " ".join(request.headers.get("x-actor", "").split())[:100]
        actor = f"{_peer(request)} ({who})" if who else _peer(request)
        try:
            changed = await asyncio.to_thread(
                rem.set_halt,
                halt=not change.enabled,
                scope=change.scope,
                actor=actor,
                reason=change.reason,
            )
            with engine.connect() as conn:
                out = switch_state(conn)
        except SQLAlchemyError as exc:
            metrics.requests.labels("killswitch", "503").inc()
            return _db_error(exc)
        metrics.requests.labels("killswitch", "200").inc()
        return JSONResponse({**out, "changed": changed})

    @app.get("/healthz", responses={**ok(HealthOut), 503: {"model": HealthOut}})
    def healthz() -> Response:
        db = ping(engine)
        halted: list[str] = []
        if db:
            try:
                with engine.connect() as conn:
                    halted = [h.scope for h in killswitch.halts(conn)]
            except SQLAlchemyError:
                db = False
        body = {
            "status": "ok" if db else "database_down",
            "database": db,
            "enabled": rem.config.enabled and killswitch.ALL not in halted and db,
            "halted": halted,
            "dry_run": settings.autofix_dry_run,
            "rules": len(policy),
            "verifications_pending": rem.pending_verifications(),
            "guard_state": rem.guard_store.name,
        }
        if hasattr(rem.guard_store, "ping"):
            body["redis"] = rem.guard_store.ping()
            if not body["redis"]:
                body["status"] = "redis_down"
                db = False
        return JSONResponse(body, status_code=200 if db else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    def prom() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _peer(request: Request) -> str:
    return f"http:{request.client.host}" if request.client else "http"


def _bad(metrics: RunbookMetrics, route: str, exc: Exception) -> JSONResponse:
    if isinstance(exc, BadBody):
        metrics.requests.labels(route, str(exc.status)).inc()
        return _error(exc.status, str(exc))
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        metrics.requests.labels(route, "422").inc()
        return _error(422, f"{where}: {err['msg']}")
    metrics.requests.labels(route, "400").inc()
    return _error(400, f"malformed JSON: {exc}")
