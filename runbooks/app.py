"""The webhook's HTTP service (FastAPI): builds its services and mounts its routers.

The routes live in their own modules, one router each:

- ``runbooks.inputs``: ``POST /anomalies``, ``POST /alertmanager`` (what can
  trigger an action);
- ``runbooks.changes``: ``POST /changes`` (deploys and configuration changes);
- ``runbooks.feedback``: ``POST /feedback`` (operators' verdicts on anomalies);
- ``runbooks.admin``: ``GET /approve``, ``GET /reject``, ``GET /ack``, ``GET`` and
  ``POST /killswitch``;
- ``runbooks.reads``: ``GET /audit``, ``GET /events``;
- ``runbooks.console``: ``GET`` and ``POST /console``, ``GET /console/pending``;
- ``runbooks.slack``: ``POST /slack/interactive``;
- ``runbooks.health``: ``GET /healthz``, ``GET /metrics``.

Authentication is a dependency of each route (``runbooks.auth``); the services
(the remediator, settings, engine, metrics, rate limiter) live on ``app.state``
and reach a route as typed dependencies (``runbooks.web``).

Every route: 413 for a body over ``RUNBOOK_MAX_BODY_BYTES`` (before it is read),
422 for JSON nested too deeply, and errors as ``{"error": "..."}``, FastAPI's own
parameter validation included. ``runbooks.schemas`` documents every answer in the
OpenAPI (``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException

from aiops.core.settings import Settings
from runbooks import admin, changes, console, feedback, health, inputs, reads, slack
from runbooks.access import ReadAccess, Refusals
from runbooks.decision import GuardConfig
from runbooks.engine import Remediator
from runbooks.guards import make_guards
from runbooks.limits import BodyLimit, RateLimiter
from runbooks.metrics import FeedbackCollector, RunbookMetrics, StateCollector
from runbooks.policy import Policy
from runbooks.schemas import install_openapi
from runbooks.web import http_error, method_table, validation_error

log = logging.getLogger("aiops.webhook")

#: seconds between the background checks (verifications due, refusals to aggregate)
TICK_SECONDS = 1.0

ROUTERS = (
    inputs.router,
    changes.router,
    feedback.router,
    admin.router,
    reads.router,
    console.router,
    slack.router,
    health.router,
)


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
    events = reads.Broadcaster()
    rem = Remediator(
        engine,
        policy,
        GuardConfig.from_settings(settings),
        kube=kube,
        on_audit=events.publish,
        metrics=metrics,
        on_pending=slack.pending_notifier(settings),
        guard_store=guard_store,
        on_incident=slack.incident_notifier(settings),
    )
    registry.register(StateCollector(engine, settings, guard_store, lambda: rem.config.enabled))
    registry.register(FeedbackCollector(engine))
    refusals = Refusals(
        lambda actor, details: rem.audit.now("unauthorized", None, actor=actor, details=details),
        registry,
    )

    app = FastAPI(title="aiops runbook webhook", lifespan=_lifespan(rem, refusals, events))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    am_token = bool(settings.alertmanager_token and settings.alertmanager_token.get_secret_value())
    install_openapi(app, alertmanager_token=am_token, read_open=settings.read_open)
    app.state.settings = settings
    app.state.engine = engine
    app.state.registry = registry
    app.state.remediator = rem
    app.state.metrics = metrics
    app.state.refusals = refusals
    app.state.reads = ReadAccess(settings)
    app.state.limiter = RateLimiter(settings.rate_limit)
    app.state.events = events
    for router in ROUTERS:
        app.include_router(router)
    app.state.methods = method_table([*app.routes, *(r for x in ROUTERS for r in x.routes)])
    return app


def _lifespan(rem: Remediator, refusals: Refusals, events: reads.Broadcaster) -> Any:
    """Start the background checks with the app; flush and close with it."""
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(TICK_SECONDS):
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
        thread = threading.Thread(target=tick, name="runbooks-verify", daemon=True)
        thread.start()
        _log_start(app.state.settings, app.state.reads, len(rem.policy))
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            with contextlib.suppress(Exception):
                refusals.flush(everything=True)
            rem.close()

    return lifespan


def _log_start(settings: Settings, reads_access: ReadAccess, rules: int) -> None:
    log.info(
        "webhook started enabled=%s dry_run=%s rules=%d",
        settings.autofix_enabled,
        settings.autofix_dry_run,
        rules,
    )
    if settings.read_open:
        log.warning(
            "RUNBOOK_READ_OPEN=true: /audit, /events and /console answer anyone who"
            " can reach the webhook"
        )
    elif not reads_access.configured:
        log.warning("RUNBOOK_READ_TOKEN is not set: /audit, /events and /console answer 401")
