"""The webhook's HTTP plumbing shared by its routers: errors, services, the peer.

Every error is ``{"error": "..."}``: the routes answer with ``error``, the
dependencies of ``runbooks.auth`` raise ``HTTPException`` and the app's handlers
(``http_error``, ``validation_error``) answer those, and FastAPI's own parameter
validation, the same way. The services the app was built with live on
``app.state``; the ``Annotated`` aliases below hand them to a route as typed
parameters (``rem: RemediatorDep``).
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import Engine

from aiops.core.redact import short_error
from aiops.core.settings import Settings
from runbooks.engine import Remediator
from runbooks.limits import BadBody, RateLimiter
from runbooks.metrics import RunbookMetrics

log = logging.getLogger("aiops.webhook")


def error(status: int, reason: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers or None)


def db_error(exc: Exception) -> JSONResponse:
    msg = short_error(exc)
    log.error("database error, nothing executed: %s", msg)
    return error(503, f"database unavailable, nothing was executed: {msg}")


def bad_request(metrics: RunbookMetrics, route: str, exc: Exception) -> JSONResponse:
    """400 for malformed JSON, 422 for too deep or invalid fields (counted)."""
    if isinstance(exc, BadBody):
        metrics.requests.labels(route, str(exc.status)).inc()
        return error(exc.status, str(exc))
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        metrics.requests.labels(route, "422").inc()
        return error(422, f"{where}: {err['msg']}")
    metrics.requests.labels(route, "400").inc()
    return error(400, f"malformed JSON: {exc}")


def peer(request: Request) -> str:
    """The audit's actor for an HTTP caller."""
    return f"http:{request.client.host}" if request.client else "http"


def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's parameter validation, answered like every other error of the webhook."""
    errs = exc.errors() if isinstance(exc, RequestValidationError) else []
    if not errs:
        return error(422, "invalid request")
    err = errs[0]
    where = ".".join(str(p) for p in err["loc"]) or "request"
    return error(422, f"{where}: {err['msg']}")


def http_error(request: Request, exc: Exception) -> Response:
    """An ``HTTPException`` as ``{"error": ...}`` with its headers; a 405 lists every
    method of the path in ``Allow`` (Starlette names only the first route's when one
    path has a route per method)."""
    status = getattr(exc, "status_code", 500)
    if status != 405:
        headers = getattr(exc, "headers", None) or {}
        return error(status, str(getattr(exc, "detail", "")) or "error", **headers)
    allowed: set[str] = set()
    for regex, methods in getattr(request.app.state, "methods", ()):
        if regex.match(request.url.path):
            allowed |= methods
    if "GET" in allowed:
        allowed.add("HEAD")
    return error(405, "method not allowed", Allow=", ".join(sorted(allowed)))


def method_table(routes: Any) -> list[tuple[re.Pattern[str], set[str]]]:
    """Each route's path pattern and methods, for the 405's ``Allow`` (FastAPI keeps the
    routes of an included router to itself)."""
    return [
        (route.path_regex, set(route.methods or ()))
        for route in routes
        if hasattr(route, "path_regex") and hasattr(route, "methods")
    ]


# -- the services, as dependencies ------------------------------------------------------
def _remediator(request: Request) -> Remediator:
    return request.app.state.remediator


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _metrics(request: Request) -> RunbookMetrics:
    return request.app.state.metrics


def _limiter(request: Request) -> RateLimiter:
    return request.app.state.limiter


def _app_state(request: Request) -> Any:
    return request.app.state


RemediatorDep = Annotated[Remediator, Depends(_remediator)]
SettingsDep = Annotated[Settings, Depends(_settings)]
EngineDep = Annotated[Engine, Depends(_engine)]
MetricsDep = Annotated[RunbookMetrics, Depends(_metrics)]
LimiterDep = Annotated[RateLimiter, Depends(_limiter)]
StateDep = Annotated[Any, Depends(_app_state)]
