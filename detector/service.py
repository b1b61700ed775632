"""The detector service: an APScheduler interval job plus /metrics and /healthz over HTTP.

Cycles never overlap (``max_instances=1``) and missed runs are coalesced into one.
uvicorn handles SIGTERM/SIGINT: the HTTP server stops, then the scheduler shuts down
and waits for a running cycle to finish.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import uvicorn
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from aiops.core.redact import redact
from detector.cycle import Detector
from feature_store.locks import LockHeld

log = logging.getLogger("aiops.service")


#: The nightly retrain the composition root hands the service (``training.train.retrain``):
#: it runs on the detector's settings, database and catalogue and returns its report.
Retrain = Callable[[Detector], Any]


def make_scheduler(detector: Detector, retrain: Retrain | None = None) -> BackgroundScheduler:
    """A scheduler running ``detector.run_cycle`` now and every interval, never overlapping,
    and ``retrain`` at AIOPS_RETRAIN_CRON when there is one and a database."""
    interval = detector.settings.interval_seconds
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(
        _safe_cycle,
        "interval",
        args=[detector],
        seconds=interval,
        id="detect",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(int(interval), 1),
        next_run_time=datetime.now(timezone.utc),
    )
    cron = getattr(detector.settings, "retrain_cron", "off")
    if retrain is not None and cron != "off" and getattr(detector, "engine", None) is not None:
        scheduler.add_job(
            scheduled_retrain,
            CronTrigger.from_crontab(cron, timezone="UTC"),
            args=[detector, retrain],
            id="retrain",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
        )
    return scheduler


def scheduled_retrain(detector: Detector, retrain: Retrain) -> None:
    """The nightly retrain inside the service (AIOPS_RETRAIN_CRON); never raises."""
    try:
        report = retrain(detector)
    except LockHeld as exc:
        log.warning("scheduled retrain skipped: %s", exc)
        detector.metrics.retrains.labels("skipped").inc()
        return
    except Exception:
        log.exception("scheduled retrain failed")
        detector.metrics.retrains.labels("failed").inc()
        return
    detector.metrics.retrains.labels("partial" if report.errors else "ok").inc()
    log.info(
        "scheduled retrain done series=%d promoted=%d rejected=%d seconds=%.1f",
        len(report.outcomes),
        report.count("promoted"),
        report.count("rejected"),
        report.duration,
    )


def _safe_cycle(detector: Detector) -> None:
    try:
        detector.run_cycle()
    except Exception:  # a bug must not kill the scheduler thread; it is logged and counted
        log.exception("detection cycle crashed")
        detector.metrics.cycles.labels("crashed").inc()


def create_app(
    detector: Detector, *, schedule: bool = True, retrain: Retrain | None = None
) -> FastAPI:
    """The HTTP app; with ``schedule`` its lifespan runs the detection scheduler (and
    ``retrain`` nightly, see ``make_scheduler``)."""
    for collector_cls in (ProcessCollector, PlatformCollector, GCCollector):
        with contextlib.suppress(ValueError):  # already registered on this registry
            collector_cls(registry=detector.registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = make_scheduler(detector, retrain) if schedule else None
        if scheduler is not None:
            detector.check_queries()
            scheduler.start()
            log.info(
                "detector started prometheus=%s queries=%d interval=%ss",
                redact(detector.settings.prom_url),
                len(detector.queries),
                detector.settings.interval_seconds,
            )
        try:
            yield
        finally:
            if scheduler is not None:
                scheduler.shutdown(wait=True)
                log.info("detector stopped")

    app = FastAPI(title="aiops detector", lifespan=lifespan)
    app.state.retrain = retrain  # what the scheduler runs nightly (None: no retrain)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(detector.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        healthy, body = detector.health()
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/livez")
    def livez() -> dict[str, str]:
        return {"status": "alive"}

    return app


class StoppableServer(uvicorn.Server):
    """uvicorn's server, but a requested stop (SIGTERM/SIGINT) ends with exit status 0.

    uvicorn re-raises the captured signal after its graceful shutdown, which makes
    the process die "by signal" even though it stopped cleanly.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def make_server(app: FastAPI, *, host: str, port: int) -> StoppableServer:
    return StoppableServer(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    )
