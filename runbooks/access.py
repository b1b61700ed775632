"""Who may read, and what a refused request costs the audit.

Reading (``GET /audit``, ``GET /events``, ``GET /console``, ``GET /console/pending``)
takes a credential by default: ``Authorization: Bearer $RUNBOOK_READ_TOKEN`` (the
admin token, ``RUNBOOK_ADMIN_TOKEN``, reads too), or the console's cookie, which the
page sets once the token was given to it (``/console?token=...`` or its form). The
cookie holds an HMAC of the token, not the token: ``HttpOnly`` (no script reads
it), ``SameSite=Strict`` (no other site's page sends it). Every comparison is
constant-time. Only ``RUNBOOK_READ_OPEN=true`` opens the read endpoints; without
a token and without it they answer 401 and say why.

Refusals (every 401: a forged or stale signature, a wrong bearer token or read
token) are counted in ``runbooks_refusals_total{endpoint,reason}`` and reach the
append-only audit bounded: per endpoint and source (client address) the first
refusal of each minute is one ``unauthorized`` row, the others of that minute are
counted and written as ONE aggregated row (``details.aggregated``: how many, and
their reasons) once the minute is over; past ``MAX_SOURCES`` sources in a minute,
new sources share one aggregated row per endpoint (source ``*``). The refusals
kept out of the audit that way are ``runbooks_refusals_suppressed_total{endpoint}``.
So a flood of forged requests writes a few rows per minute, whatever its size.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("aiops.webhook")

#: the console's cookie: an HMAC of the read (or admin) token
COOKIE = "aiops_read"
COOKIE_MAX_AGE = 12 * 3600
_COOKIE_CONTEXT = b"aiops console read cookie v1"

#: a refused read: which credential to send, and keep the answer out of caches
READ_HEADERS = {"WWW-Authenticate": 'Bearer realm="aiops read"', "Cache-Control": "no-store"}

WRONG_TOKEN = "missing or wrong read token (Authorization: Bearer $RUNBOOK_READ_TOKEN)"
CLOSED = (
    "RUNBOOK_READ_TOKEN is not set and RUNBOOK_READ_OPEN is not true: the read endpoints are closed"
)


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def _matches(given: str, expected: list[str]) -> bool:
    """Constant-time: every expected value is compared, whatever matched first."""
    hits = [hmac.compare_digest(given.encode(), e.encode()) for e in expected]
    return any(hits)


class ReadAccess:
    """The read endpoints' check: bearer token or console cookie, unless opened."""

    def __init__(self, settings: Any) -> None:
        self.open = bool(settings.read_open)
        tokens = [
            s.get_secret_value()
            for s in (settings.read_token, settings.admin_token)
            if s is not None and s.get_secret_value()
        ]
        self._bearers = [f"Bearer {t}" for t in tokens]
        self._tokens = tokens
        self._cookies = [_cookie_value(t) for t in tokens]
        self.secure = str(settings.public_url).startswith("https://")

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def refusal(self, request: Request) -> str | None:
        """None if ``request`` may read, else why not."""
        if self.open:
            return None
        if not self._tokens:
            return CLOSED
        auth = request.headers.get("authorization")
        cookie = request.cookies.get(COOKIE)
        bearer_ok = auth is not None and _matches(auth, self._bearers)
        cookie_ok = cookie is not None and _matches(cookie, self._cookies)
        return None if bearer_ok or cookie_ok else WRONG_TOKEN

    def token_ok(self, token: str) -> bool:
        return bool(self._tokens) and _matches(token, self._tokens)

    def cookie_for(self, token: str) -> dict[str, Any]:
        """``Response.set_cookie`` arguments for a token that passed ``token_ok``."""
        return {
            "key": COOKIE,
            "value": _cookie_value(token),
            "max_age": COOKIE_MAX_AGE,
            "path": "/",
            "httponly": True,
            "samesite": "strict",
            "secure": self.secure,
        }


# -- refusals -------------------------------------------------------------------------------

#: the aggregation window (seconds)
WINDOW = 60.0
#: sources audited one by one per window; later ones are counted together as ``*``
MAX_SOURCES = 20
OTHERS = "*"


def reason_of(why: str) -> str:
    """A refusal's reason as a short label value (bounded set, for the metric)."""
    text = why.lower()
    for needle, reason in (
        ("is not set", "not_configured"),
        ("missing timestamp", "missing_timestamp"),
        ("timestamp is not", "bad_timestamp"),
        ("timestamp outside", "stale_timestamp"),
        ("missing signature", "missing_signature"),
        ("non-v0", "missing_signature"),
        ("signature does not match", "bad_signature"),
        ("token", "bad_token"),
    ):
        if needle in text:
            return reason
    return "other"


@dataclass
class _Bucket:
    counted: int = 0  # refusals after the first one, not audited one by one
    reasons: Tally[str] = field(default_factory=Tally)


class Refusals:
    """Refused requests to metrics (all) and to the audit (bounded, see the module)."""

    def __init__(
        self,
        write: Callable[[str, dict[str, Any]], None],
        registry: CollectorRegistry,
        *,
        window: float = WINDOW,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.write = write  # (actor, details): one committed audit row of kind unauthorized
        self.window = window
        self.max_sources = max_sources
        self.total = Counter(
            "runbooks_refusals",
            "Requests refused 401 (forged, stale or missing signature or token), by reason",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.suppressed = Counter(
            "runbooks_refusals_suppressed",
            "Refusals counted into one aggregated audit row per source and minute"
            " instead of one row each",
            ["endpoint"],
            registry=registry,
        )
        self._lock = threading.Lock()
        #: window number -> (endpoint, source) -> bucket
        self._windows: dict[int, dict[tuple[str, str], _Bucket]] = {}

    def record(self, endpoint: str, source: str, why: str, now: float | None = None) -> bool:
        """Count one refusal; True if it is to be audited on its own row now."""
        now = time.time() if now is None else now
        reason = reason_of(why)
        self.total.labels(endpoint, reason).inc()
        with self._lock:
            buckets = self._windows.setdefault(int(now // self.window), {})
            key = (endpoint, source)
            bucket = buckets.get(key)
            if bucket is None:
                individual = sum(1 for (_, s) in buckets if s != OTHERS)
                if individual < self.max_sources:
                    buckets[key] = _Bucket()
                    return True
                key = (endpoint, OTHERS)
                bucket = buckets.setdefault(key, _Bucket())
            bucket.counted += 1
            bucket.reasons[reason] += 1
        self.suppressed.labels(endpoint).inc()
        return False

    def flush(self, now: float | None = None, *, everything: bool = False) -> int:
        """Write the aggregated rows of the windows that ended (all with ``everything``);
        the number of rows written."""
        now = time.time() if now is None else now
        current = int(now // self.window)
        with self._lock:
            done = [w for w in self._windows if everything or w < current]
            ended = {w: self._windows.pop(w) for w in done}
        written = 0
        for w, buckets in sorted(ended.items()):
            for (endpoint, source), bucket in sorted(buckets.items()):
                if not bucket.counted:
                    continue
                details = {
                    "route": endpoint,
                    "why": f"{bucket.counted} more refused requests in this minute",
                    "aggregated": bucket.counted,
                    "reasons": dict(sorted(bucket.reasons.items())),
                    "from": w * self.window,
                    "until": (w + 1) * self.window,
                }
                actor = "http" if source == OTHERS else f"http:{source}"
                if source == OTHERS:
                    details["sources"] = "more than the sources audited one by one"
                try:
                    self.write(actor, details)
                    written += 1
                except SQLAlchemyError:
                    log.error(
                        "cannot audit %d refused requests to %s: database down",
                        bucket.counted,
                        endpoint,
                    )
        return written

    async def refuse(self, request: Request, endpoint: str, why: str) -> None:
        """Count a refused request; audit it now if it is the first of its source and
        endpoint in this window. Never raises for a database outage."""
        source = request.client.host if request.client else "unknown"
        if not self.record(endpoint, source, why):
            return
        try:
            await asyncio.to_thread(self.write, f"http:{source}", {"route": endpoint, "why": why})
        except SQLAlchemyError:
            log.error("cannot audit a refused request to %s: database down", endpoint)


async def read_denied(request: Request, route: str) -> str | None:
    """None if ``request`` may read; else why not (the refusal counted and audited)."""
    why = request.app.state.reads.refusal(request)
    if why is not None:
        request.app.state.metrics.requests.labels(route.strip("/"), "401").inc()
        await request.app.state.refusals.refuse(request, route, why)
    return why
