"""Who may call what: the webhook's authentication, as FastAPI dependencies.

- ``signed(route)`` (``POST /anomalies``, ``POST /changes``): the detector's HMAC
  signature over the raw body and a fresh timestamp, keyed with
  ``RUNBOOK_WEBHOOK_SECRET``; without the secret every event is refused;
- ``slack_signed`` (``POST /slack/interactive``): Slack's signature, keyed with
  ``SLACK_SIGNING_SECRET``;
- ``alertmanager`` (``POST /alertmanager``): ``Authorization: Bearer
  $RUNBOOK_ALERTMANAGER_TOKEN`` when the token is set;
- ``admin(route, what)`` (``POST /killswitch``, ``GET /ack``): the bearer
  ``RUNBOOK_ADMIN_TOKEN``; without it these routes answer 401;
- ``reader(route)`` (``GET /audit``, ``GET /events``, ``GET /console/pending``):
  the read token, the admin token or the console's cookie (``runbooks.access``);
- ``rate_limited(route)``: 429 with ``Retry-After`` above ``RUNBOOK_RATE_LIMIT``.

A dependency runs before the route reads its body or its parameters. Every 401
is counted in ``runbooks_requests_total`` and ``runbooks_refusals_total`` and
audited, bounded (``runbooks.access.Refusals``); then the dependency raises an
``HTTPException`` that the app answers as ``{"error": "..."}``. Every token
comparison is constant-time. Approval links carry their own authority (a signed
single-use token, ``runbooks.approvals``), and so does a Slack button once Slack's
signature passed; ``GET /console`` answers its own 401 with the sign-in page.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException, Request

from aiops.core.signing import (
    SIGNATURE_HEADER,
    SLACK_SIGNATURE_HEADER,
    SLACK_TIMESTAMP_HEADER,
    TIMESTAMP_HEADER,
    verify_event,
    verify_slack,
)
from runbooks.access import READ_HEADERS, read_denied

Dependency = Callable[[Request], Awaitable[None]]


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value else None


async def _refuse(request: Request, route: str, why: str) -> HTTPException:
    """Count and audit a 401; the exception to raise."""
    request.app.state.metrics.requests.labels(route.strip("/"), "401").inc()
    await request.app.state.refusals.refuse(request, route, why)
    return HTTPException(401, why)


async def _check_signature(
    request: Request,
    route: str,
    secret: str | None,
    setting: str,
    verify: Callable[..., str | None],
    headers: tuple[str, str],
) -> None:
    """Pass a request whose raw body ``verify`` accepts under ``secret`` (the timestamp
    and signature ``headers``); else 401. Without the secret every request is refused."""
    if not secret:
        problem = f"{setting} is not set: signed requests cannot be verified"
    else:
        stamp, signature = (request.headers.get(h) for h in headers)
        problem = verify(secret, stamp, signature, await request.body(), time.time())
    if problem:
        raise await _refuse(request, route, problem)


def signed(route: str) -> Dependency:
    """The detector's signature over the raw body (``aiops.core.signing``), keyed with
    ``RUNBOOK_WEBHOOK_SECRET``: detector events and announced changes."""

    async def dependency(request: Request) -> None:
        secret = _secret(request.app.state.settings.webhook_secret)
        headers = (TIMESTAMP_HEADER, SIGNATURE_HEADER)
        await _check_signature(
            request, route, secret, "RUNBOOK_WEBHOOK_SECRET", verify_event, headers
        )

    return dependency


#: ``POST /anomalies``: the detector's events
signed_event = signed("/anomalies")


async def slack_signed(request: Request) -> None:
    """Slack's signature over the raw body (``SLACK_SIGNING_SECRET``): a button click."""
    secret = _secret(request.app.state.settings.slack_signing_secret)
    headers = (SLACK_TIMESTAMP_HEADER, SLACK_SIGNATURE_HEADER)
    await _check_signature(
        request, "/slack/interactive", secret, "SLACK_SIGNING_SECRET", verify_slack, headers
    )


async def _bearer(request: Request, token: str | None, route: str, unset: str) -> None:
    """Pass a request bearing ``token``; else 401. ``unset``: why, when there is no token."""
    auth = request.headers.get("authorization", "")
    if token and hmac.compare_digest(auth.encode(), f"Bearer {token}".encode()):
        return
    raise await _refuse(request, route, "missing or wrong bearer token" if token else unset)


async def alertmanager(request: Request) -> None:
    """The Alertmanager bearer token, when ``RUNBOOK_ALERTMANAGER_TOKEN`` is set."""
    token = _secret(request.app.state.settings.alertmanager_token)
    if token:
        await _bearer(request, token, "/alertmanager", "")


def admin(route: str, what: str) -> Dependency:
    """The admin bearer token for ``route``; ``what`` cannot be done without it."""

    async def dependency(request: Request) -> None:
        token = _secret(request.app.state.settings.admin_token)
        unset = f"RUNBOOK_ADMIN_TOKEN is not set: {what} over HTTP"
        await _bearer(request, token, route, unset)

    return dependency


def feedback_giver(route: str) -> Dependency:
    """``RUNBOOK_FEEDBACK_TOKEN`` or ``RUNBOOK_ADMIN_TOKEN`` as a bearer token: a verdict
    changes what the detector pages for, so nobody who merely reaches the webhook
    gives one."""

    async def dependency(request: Request) -> None:
        s = request.app.state.settings
        tokens = [t for t in (_secret(s.feedback_token), _secret(s.admin_token)) if t]
        given = request.headers.get("authorization", "").encode()
        if any(hmac.compare_digest(given, f"Bearer {t}".encode()) for t in tokens):
            return
        unset = "RUNBOOK_FEEDBACK_TOKEN is not set: feedback over HTTP"
        raise await _refuse(request, route, "missing or wrong bearer token" if tokens else unset)

    return dependency


def reader(route: str) -> Dependency:
    """Read access to ``route`` (``runbooks.access``): else 401 asking for a bearer."""

    async def dependency(request: Request) -> None:
        why = await read_denied(request, route)
        if why is not None:
            raise HTTPException(401, why, headers=READ_HEADERS)

    return dependency


def rate_limited(route: str | None) -> Dependency:
    """429 with ``Retry-After`` when the webhook's token bucket is empty (counted for
    ``route`` when given)."""

    async def dependency(request: Request) -> None:
        wait = request.app.state.limiter.take()
        if wait:
            if route:
                request.app.state.metrics.requests.labels(route, "429").inc()
            retry = str(max(1, round(wait)))
            raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": retry})

    return dependency
