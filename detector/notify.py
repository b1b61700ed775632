"""Anomaly events to the runbook webhook (DESIGN 4.3), signed, one per onset and end.

When ``RUNBOOK_WEBHOOK_URL`` is set the detector posts one ``firing`` event when
an anomaly starts and one ``resolved`` event when it ends — not one per cycle.
Events are sent from a background thread so a slow webhook never delays a cycle;
5xx answers, timeouts and connection errors are retried with exponential backoff,
4xx answers are not (the event is wrong, sending it again will not help).
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from typing import Any

import httpx

from detector.source import series_key
from runbooks.signing import signed_headers

log = logging.getLogger("aiops.notify")


def event_id(metric: str, labels: dict[str, str], started_at: float) -> str:
    """Stable per series and onset: a replay of the same onset has the same id."""
    raw = f"{series_key(metric, labels)}@{started_at:.0f}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def anomaly_event(result: Any, status: str, now: float) -> dict[str, Any]:
    def num(v: float | None) -> float | None:
        return None if v is None or v != v or v in (float("inf"), float("-inf")) else float(v)

    started = result.started_at if result.started_at is not None else result.observed_at
    return {
        "id": event_id(result.metric, result.labels, started),
        "metric": result.metric,
        "labels": dict(result.labels),
        "score": num(result.score),
        "reasons": [r.as_dict() for r in result.reasons],
        "value": num(result.value),
        "baseline": num(result.baseline),
        "started_at": started,
        "observed_at": now if status == "resolved" else result.observed_at,
        "model_version": result.model_version,
        "status": status,
    }


class Notifier:
    def __init__(
        self,
        url: str,
        secret: str | None,
        *,
        timeout: float = 5.0,
        attempts: int = 5,
        backoff: float = 0.5,
        metrics: Any = None,
    ) -> None:
        self.url = url
        self.secret = secret
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self.metrics = metrics
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._run, name="aiops-notify", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.error("webhook queue full, event dropped id=%s", event.get("id"))
            self._count("dropped")

    def close(self, timeout: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued event was handled (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.webhook_events.labels(result).inc()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while True:
                event = self._queue.get()
                try:
                    if event is None:
                        return
                    self._deliver(client, event)
                finally:
                    self._queue.task_done()

    def _deliver(self, client: httpx.Client, event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        for attempt in range(1, self.attempts + 1):
            headers = {"Content-Type": "application/json"}
            if self.secret:
                headers.update(signed_headers(self.secret, body))
            try:
                r = client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if r.is_success:
                    self._count("sent")
                    return
                if 400 <= r.status_code < 500 and r.status_code != 429:
                    log.error(
                        "webhook refused event id=%s status=%d body=%s",
                        event["id"],
                        r.status_code,
                        r.text[:200],
                    )
                    self._count("refused")
                    return
                problem = f"HTTP {r.status_code}"
            if attempt < self.attempts:
                time.sleep(self.backoff * 2 ** (attempt - 1))
        log.error("webhook unreachable, event dropped id=%s error=%s", event["id"], problem)
        self._count("failed")
